package resolver

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
)

// sizedAnswer returns an answer to q packing to exactly size bytes, its
// bulk in TXT records.
func sizedAnswer(t testing.TB, q *dns.Msg, size int) *dns.Msg {
	t.Helper()
	m := dnstest.Reply(q, dns.RcodeSuccess)
	name := q.Question[0].Name
	for {
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		short := size - len(b)
		n := len(m.Answer)
		switch {
		case short == 0:
			return m
		case short < 0:
			// A record added overshot: take it from the string before.
			prev := m.Answer[n-2].(*dns.TXT)
			prev.Txt[0] = prev.Txt[0][:len(prev.Txt[0])+short]
		case n > 0 && len(m.Answer[n-1].(*dns.TXT).Txt[0]) < 255:
			last := m.Answer[n-1].(*dns.TXT)
			last.Txt[0] += strings.Repeat("x", min(short, 255-len(last.Txt[0])))
		default:
			m.Answer = append(m.Answer, &dns.TXT{
				Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 60},
				Txt: []string{""},
			})
		}
	}
}

// sizedServer answers every query, over UDP and TCP, with sizedAnswer.
func sizedServer(t *testing.T, size int) *dnstest.Server {
	return dnstest.NewServer(t, func(w dns.ResponseWriter, r *dns.Msg) {
		_ = w.WriteMsg(sizedAnswer(t, r, size))
	})
}

func nets(srv *dnstest.Server) string {
	var nets []string
	for _, q := range srv.Queries() {
		nets = append(nets, q.Net)
	}
	return strings.Join(nets, ",")
}

// An answer too big for the UDP read buffer must not be cut short: it is
// fetched again over TCP. One that fits is taken as it is.
func TestLargeUDPAnswer(t *testing.T) {
	tests := []struct {
		size int
		nets string
	}{
		{udpReadSize - 1, "udp"},
		{udpReadSize, "udp,tcp"},
		{udpReadSize + 1, "udp,tcp"},
		{3 * udpReadSize, "udp,tcp"},
	}
	for _, tt := range tests {
		srv := sizedServer(t, tt.size)
		r := newResolver(t, Config{Upstreams: []policy.Upstream{srv.Upstream()}})
		q := query("www.example.com", dns.TypeTXT)
		m, _ := exchange(t, r, q)
		if got := m.Len(); got != tt.size {
			t.Errorf("%d-byte answer: got %d bytes", tt.size, got)
		}
		if got := nets(srv); got != tt.nets {
			t.Errorf("%d-byte answer: got queries over %s, want %s", tt.size, got, tt.nets)
		}
		// The socket survives an answer too big for it.
		exchange(t, r, q)
		qs := srv.Queries()
		var ports []uint16
		for _, q := range qs {
			if q.Net == "udp" {
				ports = append(ports, q.From.Port())
			}
		}
		if len(ports) != 2 || ports[0] != ports[1] {
			t.Errorf("%d-byte answer: got UDP queries from ports %v, want two from one", tt.size, ports)
		}
	}
}

// Reads first wait unwatchedWait without watching the context; an answer
// that takes longer must still be taken, over UDP and over TLS, and leave
// the connection reusable.
func TestSlowAnswer(t *testing.T) {
	for _, tls := range []bool{false, true} {
		name := "udp"
		newServer := dnstest.NewServer
		if tls {
			name, newServer = "tls", dnstest.NewTLSServer
		}
		t.Run(name, func(t *testing.T) {
			srv := newServer(t, zone())
			srv.SetFault(dnstest.Fault{Delay: 3 * unwatchedWait})
			r := newResolver(t, Config{Upstreams: []policy.Upstream{srv.Upstream()}, Timeout: hangLimit})
			for _, ctx := range []context.Context{context.Background(), t.Context()} {
				m, _, err := r.Exchange(ctx, query("www.example.com", dns.TypeA))
				if err != nil {
					t.Fatal(err)
				}
				if len(m.Answer) != 1 {
					t.Fatalf("got %v, want one A record", m.Answer)
				}
			}
			from := map[netip.AddrPort]bool{}
			for _, q := range srv.Queries() {
				from[q.From] = true
			}
			if len(from) != 1 {
				t.Errorf("got queries from %d sockets, want 1", len(from))
			}
		})
	}
}

// Cancelling the context ends an exchange waiting on a silent upstream
// promptly, long before its Timeout, whether it comes during the first,
// unwatched wait or after.
func TestCancelEndsWait(t *testing.T) {
	for _, tls := range []bool{false, true} {
		for _, after := range []time.Duration{0, 5 * unwatchedWait} {
			name := "udp"
			newServer := dnstest.NewServer
			if tls {
				name, newServer = "tls", dnstest.NewTLSServer
			}
			t.Run(name+"/after "+after.String(), func(t *testing.T) {
				srv := newServer(t, zone())
				srv.SetFault(dnstest.Fault{Drop: true})
				r := newResolver(t, Config{Upstreams: []policy.Upstream{srv.Upstream()}, Timeout: hangLimit})
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				cancelled := make(chan time.Time, 1)
				go func() {
					for srv.QueryCount() == 0 {
						time.Sleep(time.Millisecond)
					}
					time.Sleep(after)
					cancelled <- time.Now()
					cancel()
				}()
				_, _, err := r.Exchange(ctx, query("www.example.com", dns.TypeA))
				took := time.Since(<-cancelled)
				if !errors.Is(err, context.Canceled) {
					t.Errorf("got %v, want context.Canceled", err)
				}
				// Generous for a loaded machine; the Timeout is 10 s.
				if took > time.Second {
					t.Errorf("Exchange returned %v after the cancel, want within about %v", took, unwatchedWait)
				}
				if !r.Status()[0].Healthy {
					t.Error("got upstream sick after the caller gave up, want healthy")
				}
			})
		}
	}
}

// A context cancelled before the exchange sends nothing.
func TestCancelledBeforeSends(t *testing.T) {
	srv := dnstest.NewServer(t, zone())
	r := newResolver(t, Config{Upstreams: []policy.Upstream{srv.Upstream()}})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := r.Exchange(ctx, query("www.example.com", dns.TypeA)); !errors.Is(err, context.Canceled) {
		t.Errorf("got %v, want context.Canceled", err)
	}
	if n := srv.QueryCount(); n != 0 {
		t.Errorf("upstream saw %d queries, want none", n)
	}
}

// The pool keeps as many sockets as were in use at once, so a second wave
// of as many concurrent queries dials none.
func TestUDPPoolKeepsPeak(t *testing.T) {
	const wave = 100
	// Hold each answer until the whole wave has asked, so every query of
	// a wave is in flight at once.
	var (
		mu      sync.Mutex
		arrived int
		release = make(chan struct{})
	)
	answer := zone()
	srv := dnstest.NewServer(t, func(w dns.ResponseWriter, r *dns.Msg) {
		mu.Lock()
		ch := release
		if arrived++; arrived == wave {
			arrived = 0
			close(ch)
			release = make(chan struct{})
		}
		mu.Unlock()
		select {
		case <-ch:
			answer(w, r)
		case <-time.After(hangLimit):
		}
	})
	r := newResolver(t, Config{Upstreams: []policy.Upstream{srv.Upstream()}, Timeout: 2 * hangLimit})
	ports := func() map[uint16]bool {
		var wg sync.WaitGroup
		for range wave {
			wg.Go(func() {
				if _, _, err := r.Exchange(t.Context(), query("www.example.com", dns.TypeA)); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		ports := map[uint16]bool{}
		for _, q := range srv.Queries() {
			ports[q.From.Port()] = true
		}
		srv.Reset()
		return ports
	}
	first := ports()
	if len(first) != wave {
		t.Fatalf("first wave used %d sockets, want %d", len(first), wave)
	}
	second := ports()
	for p := range second {
		if !first[p] {
			t.Errorf("second wave used port %d, not used by the first: a socket was dialed again", p)
		}
	}
	if n := len(r.ups[0].udp.idle); n != wave {
		t.Errorf("pool holds %d idle sockets, want the %d the waves used", n, wave)
	}
}

// Sockets are retired once udpMaxAge old, idle ones too, so ports keep
// changing however light the load.
func TestUDPSocketRetiredByAge(t *testing.T) {
	srv := dnstest.NewServer(t, zone())
	r := newResolver(t, Config{Upstreams: []policy.Upstream{srv.Upstream()}})
	p := r.ups[0].udp
	p.maxAge = 100 * time.Millisecond
	// Fill the pool with a few sockets.
	srv.SetFault(dnstest.Fault{Delay: 50 * time.Millisecond})
	var wg sync.WaitGroup
	for range 5 {
		wg.Go(func() { exchange(t, r, query("www.example.com", dns.TypeA)) })
	}
	wg.Wait()
	srv.SetFault(dnstest.Fault{})
	p.mu.Lock()
	var old []*udpConn
	old = append(old, p.idle...)
	p.mu.Unlock()
	if len(old) == 0 {
		t.Fatal("no sockets pooled")
	}
	before := srv.Queries()
	time.Sleep(p.maxAge)
	exchange(t, r, query("www.example.com", dns.TypeA))
	after := srv.Queries()[len(before):]
	for _, q := range before {
		if q.From == after[0].From {
			t.Errorf("query after maxAge came from %v, an old socket", q.From)
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.idle) != 1 {
		t.Errorf("got %d idle sockets after maxAge, want only the one just used", len(p.idle))
	}
	for _, c := range old {
		if _, err := c.Write([]byte{0}); !errors.Is(err, net.ErrClosed) {
			t.Errorf("old socket %v: got %v writing, want it closed", c.LocalAddr(), err)
		}
	}
}

// A UDP exchange whose goroutine waited for a CPU past the first deadline
// before it could send (here: began a second ago) still sends and reads:
// the write, which sent nothing, is tried again with the exchange's
// deadline.
func TestUDPWriteAfterFirstDeadline(t *testing.T) {
	srv := dnstest.NewServer(t, zone())
	p := &udpPool{addr: srv.Addr.String(), dialer: &net.Dialer{}, maxIdle: 1, maxUses: udpMaxUses, maxAge: udpMaxAge}
	defer p.close()
	q := query("www.example.com", dns.TypeA)
	wire, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	c, err := p.get(context.Background(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	w := wait{ctx: t.Context(), conn: c, deadline: time.Now().Add(hangLimit)}
	m, err := c.roundTrip(&w, time.Now().Add(-time.Second), wire, q.Id, q.Question[0])
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Answer) != 1 {
		t.Errorf("got %v, want one A record", m.Answer)
	}
	if !w.release() {
		t.Error("got the socket spoilt, want it reusable")
	}
}
