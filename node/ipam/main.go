// Command fulcrum-ipam is Fulcrum's CNI IPAM plugin. It gives a pod of an IP pool the address
// Fulcrum assigned at bind (annotation fulcrum.io/assigned-ip) and hands every other pod to the
// node's usual IPAM plugin, the delegate. The runtime passes pod annotations as runtimeConfig to
// a plugin with the capability "io.kubernetes.cri.pod-annotations", and bridge, ptp, macvlan and
// ipvlan pass their whole stdin to their IPAM plugin, so no API-server credentials are needed:
//
//	"ipam": {"type": "fulcrum-ipam", "poolCIDRs": ["10.244.128.0/17"], "dataDir": "/var/lib/cni/x",
//	         "delegate": {"type": "host-local", "ranges": [[{"subnet": "10.244.0.0/16", ...}]]}}
//
// A pool address must lie in poolCIDRs (which the delegate never hands out) and in a subnet of
// the delegate's ranges. Who holds which pool address on this node is a file per address under
// dataDir, written under a flock. A successor asking for an address its predecessor still holds
// (a local rebuild's successor can be bound while its predecessor's sandbox goes) waits up to
// ipam.handoverSeconds (default 30) for the holder's DEL, then gets CNI error 11 (try again later).
//
// The same binary, listed again after the main plugin in the conflist ({"type": "fulcrum-ipam",
// "poolCIDRs": [...]}: a chained plugin, given prevResult), announces each pool address of the
// new interface with a gratuitous ARP (announce.go): the address may have been another
// interface's a moment ago, and the neighbours' caches must learn its new MAC at once.
//
// It is a static Go binary because the runtime runs it on the host for every sandbox, where no
// interpreter can be assumed (docs/networking.md).
package main

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

const (
	annotation     = "fulcrum.io/assigned-ip"
	defaultDataDir = "/var/lib/cni/fulcrum-ipam"
)

var versions = []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0"}

// cniError is the CNI spec's error object; main prints it on stdout and exits 1.
type cniError struct {
	Code    int    `json:"code"`
	Msg     string `json:"msg"`
	Details string `json:"details,omitempty"`
}

func (e *cniError) Error() string { return e.Msg }
func fail(code int, details string, format string, args ...any) *cniError {
	return &cniError{Code: code, Msg: fmt.Sprintf(format, args...), Details: details}
}

type delegate struct {
	Type   string `json:"type"`
	Ranges [][]struct {
		Subnet  string `json:"subnet"`
		Gateway string `json:"gateway"`
	} `json:"ranges"`
	Routes []json.RawMessage `json:"routes"`
}

type netConf struct {
	CNIVersion string          `json:"cniVersion"`
	Name       string          `json:"name"`
	Type       string          `json:"type"`       // "fulcrum-ipam" when chained; else the main plugin's
	PrevResult json.RawMessage `json:"prevResult"` // the chained entry's input (a DEL's main plugin gets one too)
	PoolCIDRs  []string        `json:"poolCIDRs"`  // the chained entry's
	IPAM       struct {
		PoolCIDRs       []string        `json:"poolCIDRs"`
		DataDir         string          `json:"dataDir"`
		HandoverSeconds *float64        `json:"handoverSeconds"`
		Delegate        json.RawMessage `json:"delegate"`
	} `json:"ipam"`
	RuntimeConfig struct {
		Annotations map[string]string `json:"io.kubernetes.cri.pod-annotations"`
	} `json:"runtimeConfig"`
}

func main() {
	stdin, _ := io.ReadAll(os.Stdin)
	var conf netConf
	decodeErr := json.Unmarshal(stdin, &conf)
	version := cmp.Or(conf.CNIVersion, "1.0.0")
	code, err := run(os.Getenv("CNI_COMMAND"), stdin, &conf, decodeErr)
	if ce := (*cniError)(nil); errors.As(err, &ce) {
		_ = emit(struct {
			CNIVersion string `json:"cniVersion"`
			*cniError
		}{version, ce})
		os.Exit(1)
	}
	os.Exit(code)
}

// run carries out one CNI command and returns the exit status (a delegate's passes through).
func run(command string, stdin []byte, conf *netConf, decodeErr error) (int, error) {
	if command == "VERSION" {
		v := cmp.Or(conf.CNIVersion, "1.0.0")
		return 0, emit(map[string]any{"cniVersion": v, "supportedVersions": versions})
	}
	id, ifname := os.Getenv("CNI_CONTAINERID"), os.Getenv("CNI_IFNAME")
	switch {
	case command != "ADD" && command != "DEL" && command != "CHECK":
		return 0, fail(4, "", "CNI_COMMAND=%q: expected ADD, DEL, CHECK or VERSION", command)
	case id == "" || ifname == "":
		return 0, fail(4, "", "CNI_CONTAINERID and CNI_IFNAME must both be set")
	case decodeErr != nil:
		return 0, fail(6, decodeErr.Error(), "cannot decode the network config on stdin")
	case !slices.Contains(versions, conf.CNIVersion):
		return 0, fail(1, "", "cniVersion %q is not supported; use one of %v", conf.CNIVersion, versions)
	case conf.Type == "fulcrum-ipam": // chained: announce the pool addresses, pass the result on
		if command != "ADD" || len(conf.PrevResult) == 0 {
			return 0, nil
		}
		return 0, announcePool(conf, os.Getenv("CNI_NETNS"), ifname)
	}
	var del delegate
	if err := json.Unmarshal(conf.IPAM.Delegate, &del); err != nil || del.Type == "" {
		return 0, fail(7, "", "ipam.delegate must be an IPAM config with a type, e.g. host-local")
	}
	st, err := lockState(cmp.Or(conf.IPAM.DataDir, filepath.Join(defaultDataDir, conf.Name)))
	if err != nil {
		return 0, err
	}
	defer st.unlock()
	held := st.heldBy(id + "\n" + ifname)
	raw, hasAddr := conf.RuntimeConfig.Annotations[annotation]
	switch {
	case command == "ADD" && hasAddr:
		wait := 30 * time.Second
		if s := conf.IPAM.HandoverSeconds; s != nil {
			wait = time.Duration(*s * float64(time.Second))
		}
		return 0, add(st, conf, &del, raw, id+"\n"+ifname, held, time.Now().Add(wait))
	case command == "DEL" && held != "":
		return 0, st.release(held)
	case command == "CHECK" && (hasAddr || held != ""):
		if want, _ := netip.ParseAddr(raw); held == "" || hasAddr && want.String() != held {
			return 0, fail(999, "", "container %s holds no pool address %q in %s", id, raw, st.dir)
		}
		return 0, nil
	}
	st.unlock() // the delegate keeps its own state and lock
	return delegateTo(&del, conf.IPAM.Delegate, stdin)
}

// add records the pool address raw for holder ("containerID\nifname") and prints the result;
// an address another container holds is waited for until deadline, the lock let go meanwhile.
func add(st *state, conf *netConf, del *delegate, raw, holder, held string, deadline time.Time) error {
	addr, err := netip.ParseAddr(raw)
	if err != nil || addr.Zone() != "" {
		return fail(7, "", "pod annotation %s=%q is not an IP address", annotation, raw)
	}
	if err := checkPools(addr, conf.IPAM.PoolCIDRs); err != nil {
		return err
	}
	subnet, gateway, err := del.rangeOf(addr)
	if err != nil {
		return err
	}
	for other := st.holder(addr); other != "" && other != holder && time.Now().Before(deadline); {
		st.unlock()
		time.Sleep(50 * time.Millisecond)
		if err := st.relock(); err != nil {
			return err
		}
		other = st.holder(addr)
	}
	if other := st.holder(addr); other != "" && other != holder {
		return fail(11, "", "pool address %s is held on this node by container %s; retry after"+
			" its DEL, or remove %s if that container is gone",
			addr, strings.ReplaceAll(other, "\n", " interface "), st.path(addr.String()))
	}
	if err := st.record(addr.String(), holder, os.Getenv("CNI_NETNS")); err != nil {
		return err
	}
	if held != "" && held != addr.String() { // the annotation changed since an earlier ADD
		_ = st.release(held)
	}
	ip := map[string]any{"address": netip.PrefixFrom(addr, subnet.Bits()).String(), "gateway": gateway}
	family, defaultRoute := "6", "::/0"
	if addr.Is4() {
		family, defaultRoute = "4", "0.0.0.0/0"
	}
	if conf.CNIVersion != "1.0.0" { // 0.3.x and 0.4.0 results name the family
		ip["version"] = family
	}
	routes := del.Routes
	if len(routes) == 0 { // with the gateway, so bridge's isDefaultGateway adds no second one
		r, _ := json.Marshal(map[string]any{"dst": defaultRoute, "gw": gateway})
		routes = []json.RawMessage{r}
	}
	return emit(map[string]any{
		"cniVersion": conf.CNIVersion, "ips": []any{ip}, "routes": routes, "dns": struct{}{},
	})
}

func checkPools(addr netip.Addr, cidrs []string) error {
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return fail(7, "", "ipam.poolCIDRs: %q is not a CIDR; set FULCRUM_POOL_CIDR's value", c)
		} else if p.Contains(addr) {
			return nil
		}
	}
	return fail(7, "", "pool address %s is outside this network's ipam.poolCIDRs %v; the "+
		"IPPool's spec.cidr must lie within FULCRUM_POOL_CIDR", addr, cidrs)
}

// rangeOf is the delegate's subnet that holds addr, and its gateway (host-local's default: the
// subnet's first address).
func (d *delegate) rangeOf(addr netip.Addr) (netip.Prefix, netip.Addr, error) {
	var subnets []string
	for _, r := range slices.Concat(d.Ranges...) {
		subnets = append(subnets, r.Subnet)
		if p, err := netip.ParsePrefix(r.Subnet); err == nil && p.Contains(addr) {
			gw, err := netip.ParseAddr(r.Gateway)
			if err != nil {
				gw = p.Masked().Addr().Next()
			}
			return p, gw, nil
		}
	}
	return netip.Prefix{}, netip.Addr{}, fail(7, "", "pool address %s lies in no subnet of "+
		"ipam.delegate.ranges %v; poolCIDRs must lie within the pod network", addr, subnets)
}

// delegateTo execs the delegate with ipam replaced by it, passing its stdout and status through.
func delegateTo(del *delegate, delegateConf json.RawMessage, stdin []byte) (int, error) {
	conf := map[string]json.RawMessage{}
	_ = json.Unmarshal(stdin, &conf) // an object: run decoded it and checked its cniVersion
	conf["ipam"] = delegateConf
	input, _ := json.Marshal(conf)
	path := os.Getenv("CNI_PATH")
	for _, dir := range filepath.SplitList(path) {
		bin := filepath.Join(dir, del.Type)
		if info, err := os.Stat(bin); err != nil || info.IsDir() {
			continue
		}
		cmd := exec.Command(bin)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(input), os.Stdout, os.Stderr
		var exit *exec.ExitError
		if err := cmd.Run(); errors.As(err, &exit) {
			return exit.ExitCode(), nil
		} else if err != nil {
			return 0, fail(999, err.Error(), "cannot run the delegate IPAM plugin %s", bin)
		}
		return 0, nil
	}
	return 0, fail(999, "", "delegate IPAM plugin %q is not in CNI_PATH=%q", del.Type, path)
}

func emit(v any) error { return json.NewEncoder(os.Stdout).Encode(v) }
