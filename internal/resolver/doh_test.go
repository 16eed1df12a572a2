package resolver

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
)

// Queries over HTTP/2 and HTTP/1.1, with POST and GET, are answered, with
// ID 0 on the wire and the client's ID restored, over one connection
// however many queries are sent (on HTTP/2 even at once), to the
// certificate's name at the configured address.
func TestDoH(t *testing.T) {
	for _, h1 := range []bool{false, true} {
		for _, get := range []bool{false, true} {
			name := map[bool]string{false: "h2", true: "http1.1"}[h1] + "/" + map[bool]string{false: "POST", true: "GET"}[get]
			t.Run(name, func(t *testing.T) {
				srv := dnstest.NewDoHServer(t, zone(), h1)
				up := srv.Upstream(get)
				r := newResolver(t, Config{Upstreams: []policy.Upstream{up}, Timeout: hangLimit})
				for i := range 20 {
					q := query("www.example.com", dns.TypeA)
					q.Id = uint16(1000 + i)
					m, got := exchange(t, r, q)
					if m.Id != q.Id || m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 || m.Answer[0].(*dns.A).A.String() != "192.0.2.1" {
						t.Fatalf("query %d: got ID %d %s %v, want ID %d NOERROR with 192.0.2.1", i, m.Id, dns.RcodeToString[m.Rcode], m.Answer, q.Id)
					}
					if got != up {
						t.Fatalf("got the answer from %v, want %v", got, up)
					}
				}
				m, _ := exchange(t, r, query("nx.example.com", dns.TypeA))
				if m.Rcode != dns.RcodeNameError || m.Id != 4242 {
					t.Errorf("got %s ID %d, want NXDOMAIN ID 4242", dns.RcodeToString[m.Rcode], m.Id)
				}
				if !h1 {
					// Many at once: one HTTP/2 connection multiplexes them.
					var wg sync.WaitGroup
					errs := make(chan error, 50)
					for range 50 {
						wg.Go(func() {
							ctx, cancel := context.WithTimeout(context.Background(), hangLimit)
							defer cancel()
							if _, _, err := r.Exchange(ctx, query("www.example.com", dns.TypeA)); err != nil {
								errs <- err
							}
						})
					}
					wg.Wait()
					close(errs)
					for err := range errs {
						t.Fatal(err)
					}
				}
				if got := srv.Accepted.Load(); got != 1 {
					t.Errorf("server accepted %d connections, want 1 (one TLS handshake)", got)
				}
				reqs := srv.Requests()
				wantMethod, wantProto := map[bool]string{false: "POST", true: "GET"}[get], map[bool]int{false: 2, true: 1}[h1]
				wantHost := dnstest.DoHServerName + ":" + strconv.Itoa(int(srv.Addr.Port()))
				for _, req := range reqs {
					if req.Method != wantMethod || req.Proto != wantProto || req.ID != 0 || req.Host != wantHost || req.UA != "" {
						t.Fatalf("server saw %+v, want %s over HTTP/%d to %s with DNS ID 0 and no User-Agent", req, wantMethod, wantProto, wantHost)
					}
				}
				if len(reqs) < 21 {
					t.Errorf("server saw %d requests, want at least 21", len(reqs))
				}
			})
		}
	}
}

// A DoH upstream that is dead or answers anything but a DNS answer to the
// query fails over to the next, is marked sick, and its failure is
// reported to the Observer.
func TestDoHFailover(t *testing.T) {
	dead := func(t *testing.T) policy.Upstream {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		return policy.Upstream{Addr: netip.MustParseAddrPort(addr), HTTPS: true, ServerName: dnstest.DoHServerName, Path: "/dns-query"}
	}
	tests := []struct {
		name  string
		fault dnstest.DoHFault
		want  string // in the error the Observer sees
	}{
		{"dead", -1, "connection refused"},
		{"500", dnstest.DoH500, "HTTP status 500"},
		{"redirect", dnstest.DoHRedirect, "HTTP status 302"},
		{"garbage", dnstest.DoHGarbage, "unpacking response"},
		{"html", dnstest.DoHHTML, "content type"},
		{"stall", dnstest.DoHStall, "deadline exceeded"},
		{"other question", dnstest.DoHOtherQuestion, errQuestion.Error()},
		{"reply ID", dnstest.DoHReplyID, errID.Error()},
		{"too big", dnstest.DoHTooBig, "larger than 65535 bytes"},
	}
	for _, tt := range tests {
		for _, h1 := range []bool{false, true} {
			t.Run(tt.name+map[bool]string{false: "/h2", true: "/http1.1"}[h1], func(t *testing.T) {
				var bad policy.Upstream
				if tt.fault < 0 {
					bad = dead(t)
				} else {
					srv := dnstest.NewDoHServer(t, zone(), h1)
					srv.SetFault(tt.fault)
					bad = srv.Upstream(false)
				}
				good := dnstest.NewDoHServer(t, zone(), h1).Upstream(false)
				obs := &recordingObserver{}
				r := newResolver(t, Config{Upstreams: []policy.Upstream{bad, good}, Observer: obs})
				r.minBackoff = time.Hour // no probes during the test
				for i := range 3 {
					m, up := exchange(t, r, query("www.example.com", dns.TypeA))
					if up != good || m.Rcode != dns.RcodeSuccess || m.Id != 4242 {
						t.Fatalf("query %d: got %s ID %d from %v, want NOERROR ID 4242 from %v", i, dns.RcodeToString[m.Rcode], m.Id, up, good)
					}
				}
				if st := r.Status()[0]; st.Healthy {
					t.Errorf("got the failing upstream healthy, want sick")
				}
				obs.mu.Lock()
				defer obs.mu.Unlock()
				errs := obs.errs[bad.String()]
				if len(errs) != 1 || errs[0] == nil || !strings.Contains(errs[0].Error(), tt.want) {
					t.Errorf("observer saw %v for the failing upstream, want one error containing %q", errs, tt.want)
				}
			})
		}
	}
}

// A pooled HTTP/1.1 connection the server closes as a query is sent on it
// fails no query: the query goes again on a fresh connection, as DNS
// queries are idempotent.
func TestDoHRetriesClosedPooledConn(t *testing.T) {
	for _, get := range []bool{false, true} {
		srv := dnstest.NewDoHServer(t, zone(), true)
		srv.SetFault(dnstest.DoHCloseSecond)
		r := newResolver(t, Config{Upstreams: []policy.Upstream{srv.Upstream(get)}, Timeout: hangLimit})
		for i := range 3 {
			ctx, cancel := context.WithTimeout(context.Background(), hangLimit)
			_, _, err := r.Exchange(ctx, query("www.example.com", dns.TypeA))
			cancel()
			if err != nil {
				t.Fatalf("get=%v: query %d: %v", get, i, err)
			}
		}
		// Queries 2 and 3 each met a closing connection and went on a
		// new one.
		if got := srv.Accepted.Load(); got != 3 {
			t.Errorf("get=%v: server accepted %d connections, want 3", get, got)
		}
	}
}

// With only a failing DoH upstream the query fails (the DNS firewall then
// answers SERVFAIL), within the timeout.
func TestDoHAllFailing(t *testing.T) {
	srv := dnstest.NewDoHServer(t, zone(), false)
	srv.SetFault(dnstest.DoHGarbage)
	r := newResolver(t, Config{Upstreams: []policy.Upstream{srv.Upstream(false)}})
	_, _, err := r.Exchange(context.Background(), query("www.example.com", dns.TypeA))
	if err == nil || !strings.Contains(err.Error(), "no upstream answered") {
		t.Errorf("got %v, want no upstream answered", err)
	}
}

func TestDoHVerifiesCertificate(t *testing.T) {
	srv := dnstest.NewDoHServer(t, zone(), false)
	other := dnstest.NewDoHServer(t, zone(), false)
	tests := []struct {
		name string
		up   func(policy.Upstream) policy.Upstream
	}{
		{"certificate for another name", func(u policy.Upstream) policy.Upstream { u.ServerName = "evil.test"; return u }},
		{"unknown CA", func(u policy.Upstream) policy.Upstream { u.CAFile = other.CAFile; return u }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newResolver(t, Config{Upstreams: []policy.Upstream{tt.up(srv.Upstream(false))}, Timeout: hangLimit})
			_, _, err := r.Exchange(context.Background(), query("www.example.com", dns.TypeA))
			if err == nil || !strings.Contains(err.Error(), "certificate") {
				t.Errorf("got error %v, want one about the certificate", err)
			}
			if n := len(srv.Requests()); n != 0 {
				t.Errorf("server saw %d requests, want none", n)
			}
		})
	}
}

// An Age header, from an HTTP cache on the way, is taken from the TTLs.
func TestDoHAge(t *testing.T) {
	tests := []struct {
		age  string
		want uint32
	}{
		{"", 300},
		{"100", 200},
		{"400", 0},
		{"-5", 300},
		{"soon", 300},
	}
	srv := dnstest.NewDoHServer(t, zone(), false)
	r := newResolver(t, Config{Upstreams: []policy.Upstream{srv.Upstream(false)}, Timeout: hangLimit})
	for _, tt := range tests {
		srv.SetAge(tt.age)
		m, _ := exchange(t, r, query("www.example.com", dns.TypeA))
		if got := m.Answer[0].Header().Ttl; got != tt.want {
			t.Errorf("Age %q: got TTL %d, want %d", tt.age, got, tt.want)
		}
	}
}

// Close ends DoH connections: the server sees them closed.
func TestDoHClose(t *testing.T) {
	srv := dnstest.NewDoHServer(t, zone(), false)
	r, err := New(Config{Upstreams: []policy.Upstream{srv.Upstream(false)}, Timeout: hangLimit})
	if err != nil {
		t.Fatal(err)
	}
	exchange(t, r, query("www.example.com", dns.TypeA))
	if n := srv.Closed.Load(); n != 0 {
		t.Fatalf("server saw %d connections closed before Close, want 0", n)
	}
	r.Close()
	for end := time.Now().Add(hangLimit); srv.Closed.Load() != 1; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("server saw %d connections closed %v after Close, want 1", srv.Closed.Load(), hangLimit)
		}
	}
	if _, _, err := r.Exchange(context.Background(), query("www.example.com", dns.TypeA)); !errors.Is(err, ErrClosed) {
		t.Errorf("got %v after Close, want ErrClosed", err)
	}
}

// FuzzDoHResponse feeds arbitrary bodies, content types and Age headers to
// the check every DoH response goes through: it must never panic, and
// whatever it accepts must answer the question asked, with ID 0.
func FuzzDoHResponse(f *testing.F) {
	q := new(dns.Msg).SetQuestion("www.example.com.", dns.TypeA)
	q.Id = 0
	ok, _ := dnstest.Reply(q, dns.RcodeSuccess, dnstest.A("www.example.com", 300, "192.0.2.1")).Pack()
	f.Add(ok, "application/dns-message", "")
	f.Add(ok, "application/dns-message; charset=x", "10")
	f.Add(ok, "text/html", "")
	f.Add(ok[:len(ok)/2], "application/dns-message", "99999999999")
	f.Add([]byte("<html>"), "application/dns-message", "-1")
	f.Fuzz(func(t *testing.T, body []byte, ct, age string) {
		resp := &http.Response{
			StatusCode:    http.StatusOK,
			Header:        http.Header{"Content-Type": {ct}, "Age": {age}},
			Body:          io.NopCloser(strings.NewReader(string(body))),
			ContentLength: -1,
		}
		m, err := readDoHResponse(resp, q.Question[0])
		if err != nil {
			return
		}
		if m.Id != 0 || !m.Response || len(body) > dns.MaxMsgSize {
			t.Fatalf("accepted ID %d response=%v from %d bytes", m.Id, m.Response, len(body))
		}
		if len(m.Question) == 1 && m.Question[0].Qtype != dns.TypeA {
			t.Fatalf("accepted an answer to %v", m.Question[0])
		}
	})
}

// The DoH client dials only the configured address: the URL's host (the
// certificate's name, which resolves nowhere here) is never looked up, and
// a proxy from the environment is never used.
func TestDoHPinsAddress(t *testing.T) {
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	proxy := "http://" + dead.Addr().String()
	dead.Close()
	t.Setenv("HTTPS_PROXY", proxy)
	t.Setenv("https_proxy", proxy)
	t.Setenv("ALL_PROXY", proxy)
	srv := dnstest.NewDoHServer(t, zone(), false)
	r := newResolver(t, Config{Upstreams: []policy.Upstream{srv.Upstream(false)}, Timeout: hangLimit})
	m, _ := exchange(t, r, query("www.example.com", dns.TypeA))
	if len(m.Answer) != 1 {
		t.Fatalf("got %v, want one A record", m.Answer)
	}
	if got := srv.Requests(); len(got) != 1 || got[0].Host != dnstest.DoHServerName+":"+strconv.Itoa(int(srv.Addr.Port())) {
		t.Errorf("server saw %+v, want one request for %s", got, dnstest.DoHServerName)
	}
}
