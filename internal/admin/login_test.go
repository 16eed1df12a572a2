package admin

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/testutil/syncbuf"
)

// TestTokenAttemptsLimited: wrong tokens, through the login form or as a
// bearer token, are limited per source address (a burst, then one a
// second, 429 with Retry-After); right tokens cost nothing; another
// address is not slowed; the log names the source and never a token.
// Real HTTP from two loopback addresses, with the limit's clock stepped.
func TestTokenAttemptsLimited(t *testing.T) {
	ls := newLimitServer(t)
	clients := map[string]*http.Client{"127.0.0.1": ls.from(t, "127.0.0.1"), "127.0.0.2": ls.from(t, "127.0.0.2")}
	login := func(tok string) req {
		return req{method: "POST", path: "/ui/login", form: url.Values{"token": {tok}}.Encode()}
	}
	wrong := []string{"guess-0001", "guess-0002", "guess-0003", "guess-0004", "guess-0005", "guess-0006"}

	for _, tt := range []struct {
		name     string
		advance  time.Duration
		from     string
		times    int
		req      req
		code     int
		location string // for a 303
		retry    string // Retry-After of a 429
	}{
		{"four wrong logins go back to the form", 0, "127.0.0.1", 4, login(wrong[0]), 303, "/ui/login?failed=1", ""},
		{"a wrong bearer token spends the same attempts", 0, "127.0.0.1", 1, req{method: "GET", path: "/v1/policy", bearer: wrong[1]}, 401, "", ""},
		{"the sixth wrong token in a second is refused uncompared", 0, "127.0.0.1", 1, login(wrong[2]), 429, "", "1"},
		{"so is a bearer token", 0, "127.0.0.1", 1, req{method: "GET", path: "/v1/policy", bearer: wrong[3]}, 429, "", "1"},
		{"and, for that second, the right one", 0, "127.0.0.1", 1, login(testToken), 429, "", "1"},
		{"a session cookie is no attempt and still works", 0, "127.0.0.1", 1, req{method: "GET", path: "/v1/policy", cookie: Auth{Token: []byte(testToken)}.session()}, 200, "", ""},
		{"another address is not slowed", 0, "127.0.0.2", 1, login(wrong[4]), 303, "/ui/login?failed=1", ""},
		{"a second later: one more attempt", time.Second, "127.0.0.1", 1, login(wrong[5]), 303, "/ui/login?failed=1", ""},
		{"then the limit again", 0, "127.0.0.1", 1, login(wrong[5]), 429, "", "1"},
		{"half a second on, still a wait", 500 * time.Millisecond, "127.0.0.1", 1, login(wrong[5]), 429, "", "1"},
		{"a second after the last attempt the operator logs in", 500 * time.Millisecond, "127.0.0.1", 1, login(testToken), 303, "/ui/", ""},
		{"right bearer tokens cost nothing", 0, "127.0.0.1", 20, req{method: "GET", path: "/v1/policy", bearer: testToken}, 200, "", ""},
		{"the bucket refills to the burst, not beyond", time.Minute, "127.0.0.1", 5, login(wrong[0]), 303, "/ui/login?failed=1", ""},
		{"after the burst, limited", 0, "127.0.0.1", 1, login(wrong[0]), 429, "", "1"},
		{"right bearer tokens cannot pass an empty bucket either", 0, "127.0.0.1", 1, req{method: "GET", path: "/v1/policy", bearer: testToken}, 429, "", "1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ls.advance(tt.advance)
			for i := range tt.times {
				resp, body := do(t, clients[tt.from], ls.base, tt.req)
				if resp.StatusCode != tt.code || resp.Header.Get("Location") != tt.location || resp.Header.Get("Retry-After") != tt.retry {
					t.Fatalf("attempt %d: got %d Location %q Retry-After %q %q, want %d Location %q Retry-After %q",
						i+1, resp.StatusCode, resp.Header.Get("Location"), resp.Header.Get("Retry-After"), body, tt.code, tt.location, tt.retry)
				}
			}
		})
	}

	got := ls.logs.String()
	for _, want := range []string{`"msg":"admin token refused"`, `"from":"127.0.0.1"`, `"from":"127.0.0.2"`, `"via":"login form"`, `"via":"bearer"`, `"msg":"admin token attempts from this source are limited to one a second"`} {
		if !strings.Contains(got, want) {
			t.Errorf("the log lacks %s:\n%s", want, got)
		}
	}
	for _, tok := range append(wrong, testToken) {
		if strings.Contains(got, tok) {
			t.Errorf("the log shows a presented token %q:\n%s", tok, got)
		}
	}
}

// limitServer is the endpoint with a token, on a real loopback listener,
// with the attempts' clock in the test's hands.
type limitServer struct {
	base string
	logs syncbuf.Buffer
	mu   sync.Mutex // guards now
	now  time.Time
}

func newLimitServer(t *testing.T) *limitServer {
	t.Helper()
	p, err := policy.Parse("test.yaml", []byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	ls := &limitServer{now: time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)}
	clock := func() time.Time { ls.mu.Lock(); defer ls.mu.Unlock(); return ls.now }
	log := slog.New(slog.NewJSONHandler(&ls.logs, nil))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ui := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("console")) })
	h := Handler(Config{Policy: func() *policy.Policy { return p }, Auth: Auth{Token: []byte(testToken)}, UI: ui, Logger: log, Now: clock})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, h, log) }()
	t.Cleanup(func() { cancel(); <-done })
	ls.base = "http://" + ln.Addr().String()
	return ls
}

func (ls *limitServer) advance(d time.Duration) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	ls.now = ls.now.Add(d)
}

// from is a client whose connections come from ip: loopback answers on
// all of 127/8.
func (ls *limitServer) from(t *testing.T, ip string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	c := &http.Client{
		Transport:     &http.Transport{DialContext: d.DialContext},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	// Before the server's shutdown, which waits for connections that
	// never carried a request.
	t.Cleanup(c.CloseIdleConnections)
	return c
}
