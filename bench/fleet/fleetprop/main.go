// Command fleetprop measures the propagation of a fleet's learned state:
// from the moment a client receives gateway A's answer to the moment the
// answer's address is in gateway B's kernel, in B's nftables set.
//
// It asks A for one new name at a time (AAAA: the bench upstream gives
// every name its own address) and listens to nf_tables' notifications in
// its network namespace (NFNLGRP_NFTABLES, the kernel's own report of each
// committed element, as `nft monitor` shows them), keeping those of B's
// table and set. For each answer it waits until B's element has come (or
// -t has passed: lost), and records B's time minus the answer's. With
// hold: local that is how far B lags; with hold: peers B has the element
// before the answer leaves A, and the figure is negative.
//
// Both times are taken when this process reads the socket (the kernel
// gives netlink messages no timestamp): on a loaded machine either read
// can lag by a scheduling delay (up to about a millisecond seen), so with
// hold: peers a few elements may show a small positive figure; whether a
// hold really waited is what the e2e tests assert, not this.
//
// It prints one line: n, lost, p50/p90/p99/max in µs, and how many came
// before the answer (negative).
package main

import (
	"errors"
	"flag"
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	fs := flag.NewFlagSet("fleetprop", flag.ContinueOnError)
	server := fs.String("s", "127.0.0.1:53", "gateway A's DNS address")
	table := fs.String("table", "", "gateway B's nftables table (family inet)")
	set := fs.String("set", "", "the set of B's table that receives the answers' addresses (learn6.<rule> for AAAA)")
	file := fs.String("d", "", "names, one a line (dnsperf format: a second field is ignored), each asked once, in order")
	n := fs.Int("n", 1000, "answers to time")
	warm := fs.Int("w", 100, "answers to wait for first, untimed")
	timeout := fs.Duration("t", 2*time.Second, "wait for an answer, and then for B's element; longer counts as lost")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *table == "" || *set == "" {
		fmt.Fprintln(os.Stderr, "fleetprop: -table and -set are required")
		return 2
	}
	names, err := readNames(*file)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fleetprop: %v\n", err)
		return 1
	}
	if *warm+*n > len(names) {
		fmt.Fprintf(os.Stderr, "fleetprop: %d names for %d answers: every name must be new\n", len(names), *warm+*n)
		return 2
	}
	w, err := listen(*table, *set)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fleetprop: %v\n", err)
		return 1
	}
	defer w.close()
	conn, err := net.Dial("udp", *server)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fleetprop: %v\n", err)
		return 1
	}
	defer conn.Close()

	var (
		lat            []time.Duration
		lost, noAnswer int
		buf                   = make([]byte, 65535)
		id             uint16 = 1
	)
	for i := range *warm + *n {
		id++
		var m dns.Msg
		m.SetQuestion(names[i], dns.TypeAAAA)
		m.Id = id
		addr, answered, err := exchange(conn, &m, buf, *timeout)
		if err != nil {
			fmt.Fprintf(os.Stderr, "fleetprop: %s: %v\n", names[i], err)
			return 1
		}
		if !addr.IsValid() {
			if i >= *warm {
				noAnswer++
			}
			continue
		}
		programmed, ok := w.wait(addr, *timeout)
		if i < *warm {
			continue
		}
		if !ok {
			lost++
			continue
		}
		lat = append(lat, programmed.Sub(answered))
	}
	if w.err() != nil {
		fmt.Fprintf(os.Stderr, "fleetprop: listening to nftables: %v\n", w.err())
		return 1
	}
	if len(lat) == 0 {
		fmt.Fprintf(os.Stderr, "fleetprop: no element of %s %s matched an answer (lost %d, no answer %d)\n", *table, *set, lost, noAnswer)
		return 1
	}
	slices.Sort(lat)
	neg := 0
	for _, d := range lat {
		if d < 0 {
			neg++
		}
	}
	w.mu.Lock()
	overruns := w.overruns
	w.mu.Unlock()
	us := func(d time.Duration) float64 { return float64(d) / 1e3 }
	fmt.Printf("n=%d lost=%d no_answer=%d p50_us=%.1f p90_us=%.1f p99_us=%.1f max_us=%.1f before_answer=%d overruns=%d\n",
		len(lat), lost, noAnswer, us(pct(lat, 50)), us(pct(lat, 90)), us(pct(lat, 99)), us(lat[len(lat)-1]), neg, overruns)
	return 0
}

// exchange sends m and waits for its answer; it returns the first AAAA
// address of a NOERROR answer (invalid if none) and when the answer came.
func exchange(conn net.Conn, m *dns.Msg, buf []byte, timeout time.Duration) (netip.Addr, time.Time, error) {
	q, err := m.Pack()
	if err != nil {
		return netip.Addr{}, time.Time{}, err
	}
	if _, err := conn.Write(q); err != nil {
		return netip.Addr{}, time.Time{}, fmt.Errorf("sending: %w", err)
	}
	if err := conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return netip.Addr{}, time.Time{}, err
	}
	for {
		n, err := conn.Read(buf)
		now := time.Now()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return netip.Addr{}, now, nil
			}
			return netip.Addr{}, now, fmt.Errorf("receiving: %w", err)
		}
		var r dns.Msg
		if r.Unpack(buf[:n]) != nil || r.Id != m.Id {
			continue // a late answer to an earlier query
		}
		if r.Rcode != dns.RcodeSuccess {
			return netip.Addr{}, now, nil
		}
		for _, rr := range r.Answer {
			if aaaa, ok := rr.(*dns.AAAA); ok {
				a, _ := netip.AddrFromSlice(aaaa.AAAA)
				return a, now, nil
			}
		}
		return netip.Addr{}, now, nil
	}
}

// watcher keeps when each address reached one set of one table, from
// nf_tables' notifications.
type watcher struct {
	c          *netlink.Conn
	table, set string

	mu      sync.Mutex
	seen    map[netip.Addr]time.Time
	arrived chan struct{} // closed and replaced at each arrival
	failed  error
	// overruns counts the times notifications were lost (the socket's
	// buffer overflowed): their elements count as lost.
	overruns int
}

func listen(table, set string) (*watcher, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return nil, fmt.Errorf("opening a netfilter netlink socket: %w", err)
	}
	// A fleet programs every element three times (once per gateway): a
	// big buffer, so that a burst is not lost (ENOBUFS is reported).
	if err := c.SetReadBuffer(16 << 20); err != nil {
		c.Close()
		return nil, err
	}
	if err := c.JoinGroup(unix.NFNLGRP_NFTABLES); err != nil {
		c.Close()
		return nil, fmt.Errorf("subscribing to nftables notifications: %w", err)
	}
	w := &watcher{c: c, table: table, set: set, seen: map[netip.Addr]time.Time{}, arrived: make(chan struct{})}
	go w.read()
	return w, nil
}

func (w *watcher) close() { w.c.Close() }

func (w *watcher) err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.failed
}

func (w *watcher) read() {
	for {
		msgs, err := w.c.Receive()
		now := time.Now()
		if errors.Is(err, unix.ENOBUFS) {
			w.mu.Lock()
			w.overruns++
			w.mu.Unlock()
			continue
		}
		if err != nil {
			w.mu.Lock()
			if !errors.Is(err, net.ErrClosed) {
				w.failed = err
			}
			close(w.arrived)
			w.arrived = make(chan struct{})
			w.mu.Unlock()
			return
		}
		var got []netip.Addr
		for _, m := range msgs {
			if m.Header.Type != netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_NEWSETELEM) || len(m.Data) < 4 {
				continue
			}
			got = append(got, w.elements(m.Data[4:])...)
		}
		if len(got) == 0 {
			continue
		}
		w.mu.Lock()
		for _, a := range got {
			if _, ok := w.seen[a]; !ok {
				w.seen[a] = now
			}
		}
		close(w.arrived)
		w.arrived = make(chan struct{})
		w.mu.Unlock()
	}
}

// elements returns the keys of a NEWSETELEM message's elements (after its
// nfgenmsg) when they are of the watched table and set.
func (w *watcher) elements(b []byte) []netip.Addr {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return nil
	}
	var (
		table, set string
		list       []byte
	)
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_SET_ELEM_LIST_TABLE:
			table = ad.String()
		case unix.NFTA_SET_ELEM_LIST_SET:
			set = ad.String()
		case unix.NFTA_SET_ELEM_LIST_ELEMENTS:
			list = ad.Bytes()
		}
	}
	if table != w.table || set != w.set || list == nil {
		return nil
	}
	var out []netip.Addr
	elems, err := netlink.NewAttributeDecoder(list)
	if err != nil {
		return nil
	}
	for elems.Next() {
		if elems.Type() != unix.NFTA_LIST_ELEM {
			continue
		}
		if a, ok := elementKey(elems.Bytes()); ok {
			out = append(out, a)
		}
	}
	return out
}

// elementKey returns the address in an element's NFTA_SET_ELEM_KEY.
func elementKey(b []byte) (netip.Addr, bool) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return netip.Addr{}, false
	}
	for ad.Next() {
		if ad.Type() != unix.NFTA_SET_ELEM_KEY {
			continue
		}
		key, err := netlink.NewAttributeDecoder(ad.Bytes())
		if err != nil {
			return netip.Addr{}, false
		}
		for key.Next() {
			if key.Type() == unix.NFTA_DATA_VALUE {
				return netip.AddrFromSlice(key.Bytes())
			}
		}
	}
	return netip.Addr{}, false
}

// wait returns when a reached the watched set, waiting up to timeout.
func (w *watcher) wait(a netip.Addr, timeout time.Duration) (time.Time, bool) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		w.mu.Lock()
		t, ok := w.seen[a]
		arrived, failed := w.arrived, w.failed
		w.mu.Unlock()
		if ok || failed != nil {
			return t, ok
		}
		select {
		case <-arrived:
		case <-deadline.C:
			return time.Time{}, false
		}
	}
}

// pct is the nearest-rank percentile of sorted.
func pct(sorted []time.Duration, p float64) time.Duration {
	i := int(math.Ceil(float64(len(sorted))*p/100)) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func readNames(file string) ([]string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("reading names: %w", err)
	}
	var names []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		names = append(names, dns.Fqdn(f[0]))
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("%s holds no names", file)
	}
	return names, nil
}
