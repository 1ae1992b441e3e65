package main

import (
	"encoding/json"
	"net"
	"net/netip"
	"os"
	"runtime"
	"syscall"
)

// prevResult is the part of a CNI result the announcement needs.
type prevResult struct {
	Interfaces []struct {
		Name    string `json:"name"`
		Sandbox string `json:"sandbox"`
	} `json:"interfaces"`
	IPs []struct {
		Address   string `json:"address"`
		Interface *int   `json:"interface"`
	} `json:"ips"`
}

// announcePool sends a gratuitous ARP for each IPv4 pool address the main plugin put on the
// container's interface ifname, from inside the container's network namespace netns, then
// prints prevResult unchanged (a chained plugin's result). An address moved here from another
// interface (a rebuilt pod's) is then reachable at once, not after the neighbours' ARP caches
// go stale: seconds of failed readiness probes otherwise.
func announcePool(conf *netConf, netns, ifname string) error {
	var prev prevResult
	if err := json.Unmarshal(conf.PrevResult, &prev); err != nil {
		return fail(7, err.Error(), "prevResult is not a CNI result")
	}
	var addrs []netip.Addr
	for _, ip := range prev.IPs {
		p, err := netip.ParsePrefix(ip.Address)
		if err != nil || !p.Addr().Is4() || checkPools(p.Addr(), conf.PoolCIDRs) != nil {
			continue
		}
		if i := ip.Interface; i == nil || *i < len(prev.Interfaces) && prev.Interfaces[*i].Sandbox != "" {
			addrs = append(addrs, p.Addr())
		}
	}
	if len(addrs) > 0 {
		if err := garp(netns, ifname, addrs); err != nil {
			return fail(999, err.Error(), "cannot announce pool addresses %v on %s in %s", addrs, ifname, netns)
		}
	}
	_, err := os.Stdout.Write(append(append([]byte(nil), conf.PrevResult...), '\n'))
	return err
}

// garp enters netns on this (locked) thread and broadcasts an ARP request for each address
// from ifname, sender and target both the address: the announcement Linux neighbours take to
// update an entry they hold. The thread never leaves netns; the process exits soon after.
func garp(netns, ifname string, addrs []netip.Addr) error {
	runtime.LockOSThread()
	ns, err := os.Open(netns)
	if err != nil {
		return err
	}
	defer ns.Close()
	setns, known := map[string]uintptr{"amd64": 308, "arm64": 268}[runtime.GOARCH] // syscall has no SYS_SETNS
	if !known {
		return syscall.ENOSYS
	}
	if _, _, errno := syscall.RawSyscall(setns, ns.Fd(), syscall.CLONE_NEWNET, 0); errno != 0 {
		return errno
	}
	link, err := net.InterfaceByName(ifname)
	if err != nil {
		return err
	}
	const arp = 0x0806
	proto := int(arp>>8 | (arp&0xff)<<8) // network byte order
	fd, err := syscall.Socket(syscall.AF_PACKET, syscall.SOCK_RAW, proto)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	broadcast := [8]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	to := &syscall.SockaddrLinklayer{Protocol: uint16(proto), Ifindex: link.Index, Halen: 6, Addr: broadcast}
	for _, addr := range addrs {
		ip := addr.As4()
		frame := make([]byte, 0, 42)
		frame = append(frame, broadcast[:6]...)
		frame = append(frame, link.HardwareAddr...)
		frame = append(frame, 0x08, 0x06)                // ARP
		frame = append(frame, 0, 1, 0x08, 0, 6, 4, 0, 1) // Ethernet, IPv4, sizes, request
		frame = append(frame, link.HardwareAddr...)
		frame = append(frame, ip[:]...)
		frame = append(frame, 0, 0, 0, 0, 0, 0)
		frame = append(frame, ip[:]...)
		if err := syscall.Sendto(fd, frame, 0, to); err != nil {
			return err
		}
	}
	return nil
}
