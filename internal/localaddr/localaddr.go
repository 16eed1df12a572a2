// Package localaddr tracks the addresses of this host's network interfaces
// as they come and go.
//
// fqdngate treats an address of its own host like loopback: a DNS answer
// that points at one would let a client reach the gateway's own services
// through the proxy, so answers lose them and the proxy never dials them
// (netaddr.Local). A Set is read on every answer and every dial, so
// Contains reads an immutable snapshot behind an atomic pointer; Run
// replaces the snapshot when the kernel reports an address added or
// removed (rtnetlink RTM_NEWADDR and RTM_DELADDR).
package localaddr

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Config configures a Set.
type Config struct {
	// NetNS is a file descriptor of the network namespace whose addresses
	// are tracked. If zero, the namespace of the calling thread (the
	// daemon's).
	NetNS int
}

// Set is the set of this host's interface addresses, kept current by Run.
// Its methods are safe for concurrent use.
type Set struct {
	cfg     Config
	events  *netlink.Conn // subscribed to address changes before the first dump
	cur     atomic.Pointer[snapshot]
	entries map[entry]struct{} // Run's own; cur is made from it
	version uint64             // Run's own; cur carries it
}

// entry is one address on one interface: the same address may be on two,
// and stays local until it is removed from both.
type entry struct {
	index uint32
	addr  netip.Addr
}

// snapshot is the set at one moment; never modified once published.
type snapshot struct {
	addrs   map[netip.Addr]struct{}
	version uint64
}

// New subscribes to address changes, then reads every address the
// namespace has, so that no change between the two is missed: the Set is
// complete when New returns. Run keeps it current; until Run is called,
// changes queue in the socket.
func New(cfg Config) (*Set, error) {
	events, err := netlink.Dial(unix.NETLINK_ROUTE, &netlink.Config{
		NetNS:  cfg.NetNS,
		Groups: unix.RTMGRP_IPV4_IFADDR | unix.RTMGRP_IPV6_IFADDR,
	})
	if err != nil {
		return nil, fmt.Errorf("localaddr: subscribing to address changes: %w", err)
	}
	// Bursts of changes (an interface with many addresses going down)
	// should not overflow it; if they do, Run reads everything again.
	_ = events.SetReadBuffer(1 << 20)
	s := &Set{cfg: cfg, events: events}
	if err := s.resync(); err != nil {
		events.Close()
		return nil, err
	}
	return s, nil
}

// Contains reports whether a is an address of one of the host's
// interfaces. An IPv4-mapped IPv6 address is checked as the IPv4 address
// it carries; zones are ignored.
func (s *Set) Contains(a netip.Addr) bool {
	_, ok := s.cur.Load().addrs[a.WithZone("").Unmap()]
	return ok
}

// Version returns a number that changes whenever the set does, so that
// what was derived from it (a cached, inspected answer) can be made again.
func (s *Set) Version() uint64 { return s.cur.Load().version }

// Addrs returns the addresses in the set, in no particular order.
func (s *Set) Addrs() []netip.Addr {
	snap := s.cur.Load()
	out := make([]netip.Addr, 0, len(snap.addrs))
	for a := range snap.addrs {
		out = append(out, a)
	}
	return out
}

// Run applies address changes as the kernel reports them until ctx is
// done, then closes the Set's socket and returns nil. It returns an error
// if reading the changes fails for another reason than an overflowed
// socket (then it reads every address again and carries on). It belongs
// to the daemon's errgroup: without it the set goes stale.
func (s *Set) Run(ctx context.Context) error {
	defer s.events.Close()
	stop := context.AfterFunc(ctx, func() { _ = s.events.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	for {
		msgs, err := s.events.Receive()
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, unix.ENOBUFS) {
			// Changes were lost: the kernel's view is the only truth.
			if err := s.resync(); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("localaddr: reading address changes: %w", err)
		}
		changed := false
		for _, m := range msgs {
			e, ok := parse(m)
			if !ok {
				continue
			}
			switch m.Header.Type {
			case unix.RTM_NEWADDR:
				if _, had := s.entries[e]; !had {
					s.entries[e] = struct{}{}
					changed = true
				}
			case unix.RTM_DELADDR:
				if _, had := s.entries[e]; had {
					delete(s.entries, e)
					changed = true
				}
			}
		}
		if changed {
			s.publish()
		}
	}
}

// resync reads every address of the namespace into the entries and
// publishes them.
func (s *Set) resync() error {
	c, err := netlink.Dial(unix.NETLINK_ROUTE, &netlink.Config{NetNS: s.cfg.NetNS})
	if err != nil {
		return fmt.Errorf("localaddr: listing addresses: %w", err)
	}
	defer c.Close()
	req := netlink.Message{
		Header: netlink.Header{Type: unix.RTM_GETADDR, Flags: netlink.Request | netlink.Dump},
		Data:   make([]byte, unix.SizeofIfAddrmsg), // family AF_UNSPEC: both
	}
	msgs, err := c.Execute(req)
	if err != nil {
		return fmt.Errorf("localaddr: listing addresses: %w", err)
	}
	entries := make(map[entry]struct{}, len(msgs))
	for _, m := range msgs {
		if e, ok := parse(m); ok && m.Header.Type == unix.RTM_NEWADDR {
			entries[e] = struct{}{}
		}
	}
	s.entries = entries
	s.publish()
	return nil
}

// publish makes the entries the set Contains reads.
func (s *Set) publish() {
	s.version++
	addrs := make(map[netip.Addr]struct{}, len(s.entries))
	for e := range s.entries {
		addrs[e.addr] = struct{}{}
	}
	s.cur.Store(&snapshot{addrs: addrs, version: s.version})
}

// parse reads the interface and address of an RTM_NEWADDR or RTM_DELADDR
// message: struct ifaddrmsg, then attributes. The address is IFA_LOCAL
// when present (on a point-to-point link IFA_ADDRESS is the peer's), else
// IFA_ADDRESS (IPv6 sends only that).
func parse(m netlink.Message) (entry, bool) {
	if m.Header.Type != unix.RTM_NEWADDR && m.Header.Type != unix.RTM_DELADDR || len(m.Data) < unix.SizeofIfAddrmsg {
		return entry{}, false
	}
	family := m.Data[0]
	index := binary.NativeEndian.Uint32(m.Data[4:8])
	ad, err := netlink.NewAttributeDecoder(m.Data[unix.SizeofIfAddrmsg:])
	if err != nil {
		return entry{}, false
	}
	var local, address []byte
	for ad.Next() {
		switch ad.Type() {
		case unix.IFA_LOCAL:
			local = ad.Bytes()
		case unix.IFA_ADDRESS:
			address = ad.Bytes()
		}
	}
	if ad.Err() != nil {
		return entry{}, false
	}
	b := local
	if b == nil {
		b = address
	}
	a, ok := netip.AddrFromSlice(b)
	if !ok || family == unix.AF_INET && !a.Is4() || family == unix.AF_INET6 && !a.Is6() {
		return entry{}, false
	}
	return entry{index: index, addr: a.Unmap()}, true
}
