package main

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// state is this node's record of pool addresses: dataDir/<address> holds "containerID\nifname"
// and, on a third line, the container's network namespace,
// read and written under a flock on dataDir/lock, each write a temporary file renamed into place.
type state struct {
	dir  string
	lock *os.File
}

func lockState(dir string) (*state, error) {
	err := os.MkdirAll(dir, 0o755)
	var f *os.File
	if err == nil {
		f, err = os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	}
	if err == nil {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
	}
	if err != nil {
		return nil, fail(999, err.Error(), "cannot lock ipam.dataDir %s", dir)
	}
	return &state{dir: dir, lock: f}, nil
}

func (s *state) unlock() { _ = s.lock.Close() } // releases the flock; a second call is a no-op

// relock takes the flock again after unlock.
func (s *state) relock() error {
	again, err := lockState(s.dir)
	if err == nil {
		s.lock = again.lock
	}
	return err
}

func (s *state) path(addr string) string { return filepath.Join(s.dir, addr) }
func (s *state) holder(addr netip.Addr) string {
	id, ifname, _ := s.read(addr)
	if id == "" {
		return ""
	}
	return id + "\n" + ifname
}

// read is addr's holder: container ID, interface and network namespace ("" when free).
func (s *state) read(addr netip.Addr) (id, ifname, netns string) {
	data, _ := os.ReadFile(s.path(addr.String()))
	fields := append(strings.Split(strings.TrimSpace(string(data)), "\n"), "", "", "")
	return fields[0], fields[1], fields[2]
}

// heldBy is the pool address holder holds here, or "".
func (s *state) heldBy(holder string) string {
	entries, _ := os.ReadDir(s.dir)
	for _, e := range entries {
		if addr, err := netip.ParseAddr(e.Name()); err == nil && s.holder(addr) == holder {
			return e.Name()
		}
	}
	return ""
}

// record writes holder's file for addr atomically: a temporary file, then a rename.
func (s *state) record(addr, holder, netns string) error {
	tmp := s.path(".tmp-" + addr)
	err := os.WriteFile(tmp, []byte(holder+"\n"+netns+"\n"), 0o644)
	if err == nil {
		err = os.Rename(tmp, s.path(addr))
	}
	if err != nil {
		return fail(999, err.Error(), "cannot record pool address %s in %s", addr, s.dir)
	}
	return nil
}

func (s *state) release(addr string) error {
	if err := os.Remove(s.path(addr)); err != nil && !os.IsNotExist(err) {
		return fail(999, err.Error(), "cannot release pool address %s in %s", addr, s.dir)
	}
	return nil
}
