package admin

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/testutil/certs"
)

const testToken = "0123456789abcdef0123456789abcdef"

// serveAuth serves the endpoint with auth on a real loopback listener,
// over TLS when tc is not nil, and returns its base URL.
func serveAuth(t *testing.T, a Auth, tc *tls.Config) string {
	t.Helper()
	return serveLogged(t, a, tc, slog.New(slog.DiscardHandler))
}

// serveLogged is serveAuth with the endpoint's logger.
func serveLogged(t *testing.T, a Auth, tc *tls.Config, log *slog.Logger) string {
	t.Helper()
	p, err := policy.Parse("test.yaml", []byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	scheme := "http"
	if tc != nil {
		ln, scheme = tls.NewListener(ln, tc), "https"
	}
	ui := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "console "+r.URL.Path) })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Serve(ctx, ln, Handler(Config{Policy: func() *policy.Policy { return p }, Auth: a, UI: ui, Logger: log}), log)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return scheme + "://" + ln.Addr().String()
}

type req struct {
	method, path, bearer, cookie, accept, form string
}

func do(t *testing.T, c *http.Client, base string, q req) (*http.Response, string) {
	t.Helper()
	var body io.Reader
	if q.form != "" {
		body = strings.NewReader(q.form)
	}
	r, err := http.NewRequest(q.method, base+q.path, body)
	if err != nil {
		t.Fatal(err)
	}
	if q.form != "" {
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if q.bearer != "" {
		r.Header.Set("Authorization", "Bearer "+q.bearer)
	}
	if q.cookie != "" {
		r.AddCookie(&http.Cookie{Name: SessionCookie, Value: q.cookie})
	}
	if q.accept != "" {
		r.Header.Set("Accept", q.accept)
	}
	resp, err := c.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func noRedirect() *http.Client {
	return &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func TestTokenAuth(t *testing.T) {
	base := serveAuth(t, Auth{Token: []byte(testToken)}, nil)
	c := noRedirect()
	for _, tt := range []struct {
		name string
		req  req
		code int
		body string
	}{
		{"healthz stays open for probes", req{method: "GET", path: "/healthz"}, 200, "ok"},
		{"readyz stays open for probes", req{method: "GET", path: "/readyz"}, 200, "ready"},
		{"no token", req{method: "GET", path: "/v1/policy"}, 401, "Authorization: Bearer"},
		{"wrong token", req{method: "GET", path: "/v1/policy", bearer: testToken + "x"}, 401, "wrong"},
		{"token prefix", req{method: "GET", path: "/v1/policy", bearer: testToken[:31]}, 401, "wrong"},
		{"empty bearer", req{method: "GET", path: "/metrics", bearer: " "}, 401, ""},
		{"right token", req{method: "GET", path: "/v1/policy", bearer: testToken}, 200, "bank-api"},
		{"console without token, as an API", req{method: "GET", path: "/ui/"}, 401, ""},
		{"console without token, as a browser", req{method: "GET", path: "/ui/", accept: "text/html,*/*"}, 303, ""},
		{"login page open", req{method: "GET", path: "/ui/login"}, 200, "console /ui/login"},
		{"stylesheet open", req{method: "GET", path: "/ui/static/console.css"}, 200, "console"},
		{"other static files not", req{method: "GET", path: "/ui/static/console.js"}, 401, ""},
		{"the token as a cookie is no session", req{method: "GET", path: "/ui/", cookie: testToken}, 401, "log in again"},
		{"console with token", req{method: "GET", path: "/ui/", bearer: testToken}, 200, "console /ui/"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := do(t, c, base, tt.req)
			if resp.StatusCode != tt.code || !strings.Contains(body, tt.body) {
				t.Fatalf("got %d %q, want %d with %q", resp.StatusCode, body, tt.code, tt.body)
			}
			if tt.code == 401 && resp.Header.Get("WWW-Authenticate") == "" {
				t.Errorf("a 401 without WWW-Authenticate")
			}
			if strings.Contains(body, testToken) {
				t.Errorf("the response shows the token: %q", body)
			}
		})
	}

	// The login form: a wrong token goes back to the form, the right one
	// sets a session cookie the browser cannot read from scripts.
	resp, _ := do(t, c, base, req{method: "POST", path: "/ui/login", form: "token=wrong"})
	if resp.StatusCode != 303 || resp.Header.Get("Location") != "/ui/login?failed=1" || len(resp.Cookies()) != 0 {
		t.Fatalf("wrong token login: got %d to %q with cookies %v", resp.StatusCode, resp.Header.Get("Location"), resp.Cookies())
	}
	resp, _ = do(t, c, base, req{method: "POST", path: "/ui/login", form: url.Values{"token": {testToken}}.Encode()})
	if resp.StatusCode != 303 || resp.Header.Get("Location") != "/ui/" || len(resp.Cookies()) != 1 {
		t.Fatalf("login: got %d to %q with cookies %v", resp.StatusCode, resp.Header.Get("Location"), resp.Cookies())
	}
	ck := resp.Cookies()[0]
	if ck.Name != SessionCookie || !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode || ck.Value == testToken || strings.Contains(ck.Value, testToken) {
		t.Fatalf("session cookie %+v: want HttpOnly, SameSite=Strict, not the token", ck)
	}
	if resp, body := do(t, c, base, req{method: "GET", path: "/v1/learned", cookie: ck.Value}); resp.StatusCode != 200 {
		t.Fatalf("with the session cookie: got %d %q", resp.StatusCode, body)
	}
	// Another token's session is refused.
	other := Auth{Token: []byte(testToken + "2")}.session()
	if resp, _ := do(t, c, base, req{method: "GET", path: "/v1/learned", cookie: other}); resp.StatusCode != 401 {
		t.Fatalf("another token's session: got %d, want 401", resp.StatusCode)
	}
}

func TestClientCertAuth(t *testing.T) {
	ca, stranger := certs.NewCA(t), certs.NewCA(t)
	dir := t.TempDir()
	caFile := filepath.Join(dir, "clients.pem")
	if err := os.WriteFile(caFile, ca.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := ca.LeafFiles(t, "127.0.0.1")
	tc, err := policy.AdminTLS(policy.Admin{ClientCA: caFile, CertFile: certFile, KeyFile: keyFile})
	if err != nil {
		t.Fatal(err)
	}
	base := serveAuth(t, Auth{ClientCert: true}, tc)
	client := func(cert *tls.Certificate) *http.Client {
		c := &tls.Config{RootCAs: ca.Pool()}
		if cert != nil {
			c.Certificates = []tls.Certificate{*cert}
		}
		return &http.Client{Transport: &http.Transport{TLSClientConfig: c}}
	}
	mine := clientLeaf(t, ca)
	theirs := clientLeaf(t, stranger)

	if resp, _ := do(t, client(nil), base, req{method: "GET", path: "/healthz"}); resp.StatusCode != 200 {
		t.Errorf("healthz without a certificate: got %d, want 200 (probes)", resp.StatusCode)
	}
	if resp, body := do(t, client(nil), base, req{method: "GET", path: "/v1/policy"}); resp.StatusCode != 401 || !strings.Contains(body, "client certificate") {
		t.Errorf("without a certificate: got %d %q, want 401", resp.StatusCode, body)
	}
	if resp, body := do(t, client(&mine), base, req{method: "GET", path: "/v1/policy"}); resp.StatusCode != 200 {
		t.Errorf("with a certificate the CA signed: got %d %q, want 200", resp.StatusCode, body)
	}
	// A certificate another CA signed fails the handshake itself.
	r, _ := http.NewRequest("GET", base+"/v1/policy", nil)
	if resp, err := client(&theirs).Do(r); err == nil {
		resp.Body.Close()
		t.Errorf("with another CA's certificate: got %d, want a failed handshake", resp.StatusCode)
	}
	// And over plain HTTP, nothing at all.
	if resp, err := http.Get("http" + strings.TrimPrefix(base, "https") + "/v1/policy"); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("plain HTTP to the TLS listener: got %d, want 400", resp.StatusCode)
		}
	}
}

// clientLeaf issues a client certificate signed by ca.
func clientLeaf(t *testing.T, ca *certs.CA) tls.Certificate {
	t.Helper()
	certFile, keyFile := ca.LeafFiles(t, "operator")
	c, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestTokenAndClientCert(t *testing.T) {
	ca := certs.NewCA(t)
	certFile, keyFile := ca.LeafFiles(t, "127.0.0.1")
	caFile := ca.WriteFile(t)
	tc, err := policy.AdminTLS(policy.Admin{ClientCA: caFile, CertFile: certFile, KeyFile: keyFile})
	if err != nil {
		t.Fatal(err)
	}
	base := serveAuth(t, Auth{Token: []byte(testToken), ClientCert: true}, tc)
	leaf := clientLeaf(t, ca)
	withCert := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{leaf}}}}
	noCert := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}}}
	if resp, _ := do(t, noCert, base, req{method: "GET", path: "/v1/policy", bearer: testToken}); resp.StatusCode != 401 {
		t.Errorf("token without certificate: got %d, want 401", resp.StatusCode)
	}
	if resp, _ := do(t, withCert, base, req{method: "GET", path: "/v1/policy"}); resp.StatusCode != 401 {
		t.Errorf("certificate without token: got %d, want 401", resp.StatusCode)
	}
	if resp, _ := do(t, withCert, base, req{method: "GET", path: "/v1/policy", bearer: testToken}); resp.StatusCode != 200 {
		t.Errorf("both: got %d, want 200", resp.StatusCode)
	}
}
