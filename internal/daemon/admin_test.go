package daemon

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/policy"
)

// TestAdminTokenAndConsole: the daemon reads admin.token_file, refuses
// the admin API and the console without the token, keeps the probes
// open, serves the console with it, and streams a real DNS denial to
// the console's live view.
func TestAdminTokenAndConsole(t *testing.T) {
	w := newWorld(t)
	s := w.v1
	const token = "f0e1d2c3b4a5968778695a4b3c2d1e0f"
	tokFile := filepath.Join(w.dir, "admin.token")
	if err := os.WriteFile(tokFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s.extra = fmt.Sprintf("admin: {token_file: %q}\n", tokFile)
	w.start(s)
	c := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
			return w.ns.DialWith(&net.Dialer{Timeout: wait}, network, a)
		},
	}, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	get := func(path, bearer string) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", "http://"+s.listen.admin+path, nil)
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	for _, tt := range []struct {
		path, bearer string
		code         int
	}{
		{"/healthz", "", 200}, {"/readyz", "", 200},
		{"/v1/policy", "", 401}, {"/v1/policy", "wrong", 401}, {"/metrics", "", 401}, {"/ui/", "", 401},
		{"/v1/policy", token, 200}, {"/ui/", token, 200}, {"/ui/rules", token, 200}, {"/ui/login", "", 200},
	} {
		if resp, body := get(tt.path, tt.bearer); resp.StatusCode != tt.code {
			t.Errorf("%s with token %v: got %d, want %d: %s", tt.path, tt.bearer != "", resp.StatusCode, tt.code, body)
		}
	}
	// The console reads rule usage from the policy in force (its
	// observing groups too: internal/console's TestPages).
	if _, body := get("/ui/rules", token); !strings.Contains(body, `<th scope="col">Hits</th>`) {
		t.Errorf("/ui/rules shows no usage column:\n%s", body)
	}

	// The live view sees a real query the DNS firewall denies.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+s.listen.admin+"/ui/events?action=deny", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	rd := bufio.NewReader(resp.Body)
	if _, err := rd.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	w.resolves(s.listen.dns, "new.example", none)
	for {
		line, err := rd.ReadString('\n')
		if err != nil {
			t.Fatalf("the live view ended before the denial: %v", err)
		}
		if strings.HasPrefix(line, "data: ") && strings.Contains(line, `"name":"new.example"`) {
			if !strings.Contains(line, `"action":"deny"`) || !strings.Contains(line, `"component":"dns"`) {
				t.Errorf("live decision %s", line)
			}
			break
		}
	}
}

func TestExposedAdminWarning(t *testing.T) {
	for _, tt := range []struct {
		addr  string
		admin policy.Admin
		warn  bool
	}{
		{"127.0.0.1:15380", policy.Admin{}, false},
		{"[::1]:15380", policy.Admin{}, false},
		{"0.0.0.0:15380", policy.Admin{}, true},
		{"192.0.2.10:15380", policy.Admin{}, true},
		{"[::]:15380", policy.Admin{}, true},
		{"0.0.0.0:15380", policy.Admin{TokenFile: "/etc/fqdngate/admin.token"}, false},
		{"0.0.0.0:15380", policy.Admin{ClientCA: "ca.pem", CertFile: "c", KeyFile: "k"}, false},
	} {
		got := exposedAdmin(&policy.Policy{Admin: tt.admin}, tt.addr)
		if (got != "") != tt.warn {
			t.Errorf("%s with %+v: got warning %q, want one: %v", tt.addr, tt.admin, got, tt.warn)
		}
	}
}
