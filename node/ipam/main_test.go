package main

import (
	"encoding/json"
	"errors"
	"net/netip"
	"testing"
)

func code(err error) int {
	var ce *cniError
	if errors.As(err, &ce) {
		return ce.Code
	}
	return 0
}

func TestRangeOfPicksTheSubnetHoldingTheAddress(t *testing.T) {
	var d delegate
	conf := `{"type": "host-local", "ranges": [[{"subnet": "10.1.0.0/16"}],
		[{"subnet": "10.244.0.0/16", "gateway": "10.244.0.9"}]]}`
	if err := json.Unmarshal([]byte(conf), &d); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ addr, prefix, gateway string }{
		{"10.244.128.7", "10.244.0.0/16", "10.244.0.9"},
		{"10.1.2.3", "10.1.0.0/16", "10.1.0.1"}, // host-local's default: the subnet's first address
	} {
		p, gw, err := d.rangeOf(netip.MustParseAddr(tc.addr))
		if err != nil || p.String() != tc.prefix || gw.String() != tc.gateway {
			t.Errorf("rangeOf(%s) = %s, %s, %v; want %s, %s", tc.addr, p, gw, err, tc.prefix, tc.gateway)
		}
	}
	if _, _, err := d.rangeOf(netip.MustParseAddr("192.168.0.1")); code(err) != 7 {
		t.Errorf("an address in no range: %v, want code 7", err)
	}
}

func TestCheckPools(t *testing.T) {
	pools := []string{"10.244.128.0/17"}
	if err := checkPools(netip.MustParseAddr("10.244.200.1"), pools); err != nil {
		t.Errorf("inside: %v", err)
	}
	for _, bad := range [][]string{pools, {"not-a-cidr"}, nil} {
		if err := checkPools(netip.MustParseAddr("10.244.1.1"), bad); code(err) != 7 {
			t.Errorf("checkPools(10.244.1.1, %v) = %v, want code 7", bad, err)
		}
	}
}

func TestStateRecordsAndReleases(t *testing.T) {
	st, err := lockState(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer st.unlock()
	addr := netip.MustParseAddr("10.244.128.7")
	if err := st.record(addr.String(), "c1\neth0", "/var/run/netns/x"); err != nil {
		t.Fatal(err)
	}
	if st.holder(addr) != "c1\neth0" || st.heldBy("c1\neth0") != addr.String() || st.heldBy("c2\neth0") != "" {
		t.Errorf("record not found as written")
	}
	for range 2 { // a second release is not an error
		if err := st.release(addr.String()); err != nil {
			t.Error(err)
		}
	}
	if st.holder(addr) != "" {
		t.Errorf("released address still held")
	}
}
