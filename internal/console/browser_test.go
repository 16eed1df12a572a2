package console_test

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/daemon"
	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
	"github.com/fqdngate/fqdngate/internal/testutil/syncbuf"
)

var updateScreenshots = flag.Bool("update-screenshots", false, "also write the browser test's screenshots to docs/adopting/console-*.png (or set UPDATE_SCREENSHOTS=1)")

// chromium finds the browser: Debian's chromium package. Without it the
// test skips, unless CI=true, where it must run.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("chromium is not installed and CI=true: the console's browser test must run; .ci/run installs Debian's chromium package")
	}
	t.Skip("skipping the console's browser test: chromium is not installed (apt-get install chromium); with CI=true this fails instead")
	return ""
}

// gateway is the real daemon on loopback: DNS firewall, history, admin
// listener with a token, and the console.
type gateway struct {
	dns, admin string
	token      string
	log        *syncbuf.Buffer
}

const browserToken = "c0ns0le-t0ken-0123456789abcdef0123"

func startGateway(t *testing.T) *gateway {
	t.Helper()
	up := dnstest.NewServer(t, dnstest.Zone(
		dnstest.A("docs.example.", 300, "192.0.2.10"),
	))
	dir := t.TempDir()
	tok := filepath.Join(dir, "admin.token")
	if err := os.WriteFile(tok, []byte(browserToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	pol := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(pol, []byte(fmt.Sprintf(`listen: {dns: "127.0.0.1:0", proxy: "", admin: "127.0.0.1:0"}
admin: {token_file: %q}
dns: {upstreams: [%q]}
history: {path: %q}
sources:
  payments: [127.0.0.0/8]
rules:
  - name: docs
    from: [payments]
    to: [docs.example]
`, tok, up.Addr.String(), filepath.Join(dir, "history.db"))), 0o644); err != nil {
		t.Fatal(err)
	}
	// The console shows the policy's path as given: a short one reads
	// better in the screenshots.
	t.Chdir(dir)
	g := &gateway{token: browserToken, log: &syncbuf.Buffer{}}
	ready := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- daemon.Run(ctx, daemon.Options{
			PolicyPath: filepath.Base(pol),
			Logger:     slog.New(slog.NewJSONHandler(g.log, nil)),
			Stdout:     io.Discard,
			Ready:      ready,
			Version:    "v0.0.0-test",
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("daemon: %v", err)
		}
		if strings.Contains(g.log.String(), browserToken) {
			t.Errorf("the token reached the log")
		}
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("daemon stopped: %v\n%s", err, g.log.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("daemon not ready:\n%s", g.log.String())
	}
	sc := bufio.NewScanner(strings.NewReader(g.log.String()))
	for sc.Scan() {
		var l struct{ Msg, Component, Addr string }
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == "listening" {
			switch l.Component {
			case "dns":
				g.dns = l.Addr
			case "admin":
				g.admin = "http://" + l.Addr
			}
		}
	}
	if g.dns == "" || g.admin == "" {
		t.Fatalf("no listening lines for dns and admin:\n%s", g.log.String())
	}
	return g
}

// query asks the DNS firewall for name and returns the rcode.
func (g *gateway) query(t *testing.T, name string) int {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	c := &dns.Client{Timeout: 10 * time.Second}
	r, _, err := c.Exchange(m, g.dns)
	if err != nil {
		t.Fatalf("query %s: %v", name, err)
	}
	return r.Rcode
}

// get fetches path from the admin listener with token (none if empty).
func (g *gateway) get(t *testing.T, path, token string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", g.admin+path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestConsoleInBrowser drives the console in headless Chromium against
// the real daemon: the login refuses a wrong token and takes the right
// one, a denied DNS query appears live on a page filtered through its
// URL, an allowed one does not, and the history pages and suggestions
// show what was denied. Screenshots go to the test's artifact directory
// (go test -artifacts) and, with -update-screenshots, to docs/adopting.
func TestConsoleInBrowser(t *testing.T) {
	exe := chromium(t)
	docs, err := filepath.Abs(filepath.Join("..", "..", "docs", "adopting"))
	if err != nil {
		t.Fatal(err)
	}
	g := startGateway(t)

	// Without the token nothing but the probes and the login page.
	for path, want := range map[string]int{"/v1/policy": 401, "/ui/": 401, "/ui/events": 401, "/healthz": 200, "/ui/login": 200} {
		if code, body := g.get(t, path, ""); code != want {
			t.Errorf("%s without a token: got %d, want %d: %s", path, code, want, body)
		}
	}
	if code, _ := g.get(t, "/ui/", "not-the-token"); code != 401 {
		t.Errorf("/ui/ with a wrong token: got %d, want 401", code)
	}

	// Some history to read: denied names from the payments group.
	for _, n := range []string{"a.assets.example", "b.assets.example", "c.assets.example", "api.vendor.example", "api.vendor.example", "tracker.example"} {
		if rc := g.query(t, n); rc != dns.RcodeNameError {
			t.Fatalf("%s: rcode %s, want NXDOMAIN (denied)", n, dns.RcodeToString[rc])
		}
	}
	if rc := g.query(t, "docs.example"); rc != dns.RcodeSuccess {
		t.Fatalf("docs.example: rcode %s, want NOERROR (allowed)", dns.RcodeToString[rc])
	}
	waitFor(t, "the history to hold the denials", func() bool {
		_, body := g.get(t, "/v1/history?action=deny", g.token)
		return strings.Contains(body, "tracker.example") && strings.Contains(body, "c.assets.example")
	})

	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.WindowSize(1280, 860),
		chromedp.UserDataDir(t.TempDir()))...)
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(allocCtx)
	defer cancel()
	ctx, cancelT := context.WithTimeout(ctx, 3*time.Minute)
	defer cancelT()

	shots := newShots(t, docs)
	// text evaluates js in the page; "" while the page is between
	// documents (a navigation or a form post under way).
	text := func(js string) string {
		s, err := chromedp.Run(ctx, chromedp.Evaluate[string]("(function(){try{return String("+js+")}catch(e){return ''}})()"))
		if err != nil {
			if ctx.Err() != nil {
				t.Fatalf("%s: %v", js, err)
			}
			return ""
		}
		return s
	}
	waitText := func(what, js, want string) {
		t.Helper()
		waitFor(t, what, func() bool { return strings.Contains(text(js), want) })
	}

	// The console sends a browser to the login form; a wrong token is
	// refused there, the right one logs in.
	must(t, chromedp.Do(ctx, chromedp.Navigate(g.admin+"/ui/"), chromedp.WaitVisible(chromedp.CSS("#token"))))
	if loc, _ := chromedp.Run(ctx, chromedp.Location()); !strings.HasSuffix(loc, "/ui/login") {
		t.Fatalf("without a session the console went to %s, want the login form", loc)
	}
	must(t, chromedp.Do(ctx, chromedp.SendKeys(chromedp.CSS("#token"), "wrong-token"), chromedp.Submit(chromedp.CSS("#token"))))
	waitText("the login to refuse a wrong token", "document.querySelector('[role=alert]').innerText", "not the token in admin.token_file")
	if body := text("document.body.innerText"); strings.Contains(body, "policy.yaml") {
		t.Errorf("the login page shows the policy to someone without the token: %q", body)
	}
	shots.take(ctx, "login")
	must(t, chromedp.Do(ctx, chromedp.SendKeys(chromedp.CSS("#token"), g.token), chromedp.Submit(chromedp.CSS("#token"))))
	waitText("the login to lead to the live page", "document.title", "Live decisions")

	// Live, filtered through the URL: denials of the payments group.
	must(t, chromedp.Do(ctx, chromedp.Navigate(g.admin+"/ui/?group=payments&action=deny")))
	waitText("the live view to connect", "document.getElementById('live-status').textContent", "Live:")
	if v := text("document.getElementById('f-action').value + ' ' + document.getElementById('f-group').value"); v != "deny payments" {
		t.Errorf("the filter form shows %q, want the URL's filter (deny payments)", v)
	}
	g.query(t, "docs.example")             // allowed: filtered out
	g.query(t, "exfil.attacker.example")   // denied: shown
	g.query(t, "telemetry.vendor.example") // denied: shown
	waitText("the denial to appear live", "document.querySelector('#live tbody').innerText", "telemetry.vendor.example")
	rows := text("document.querySelector('#live tbody').innerText")
	if !strings.Contains(rows, "exfil.attacker.example") || !strings.Contains(rows, "deny") || !strings.Contains(rows, "payments") {
		t.Errorf("live rows %q: want both denials, written out as deny, in group payments", rows)
	}
	for _, line := range strings.Split(rows, "\n") {
		if strings.Contains(line, "\tdocs.example\t") {
			t.Errorf("live rows show the allowed docs.example through an action=deny filter: %q", line)
		}
	}
	shots.take(ctx, "live")
	// Keyboard: the first Tab reaches the skip link, the next ones the
	// pages in the nav.
	must(t, chromedp.Do(ctx, chromedp.KeyEvent("\t")))
	if got := text("document.activeElement.textContent"); got != "Skip to content" {
		t.Errorf("the first Tab focuses %q, want the skip link", got)
	}
	must(t, chromedp.Do(ctx, chromedp.KeyEvent("\t"), chromedp.KeyEvent("\t"), chromedp.KeyEvent("\t")))
	if got := text("document.activeElement.textContent"); got != "Top denied" {
		t.Errorf("after Log out and Live, Tab focuses %q, want Top denied", got)
	}

	// History: top denied names, and the group's domain table.
	must(t, chromedp.Do(ctx, chromedp.Navigate(g.admin+"/ui/top")))
	waitText("top denied names", "document.querySelector('main').innerText", "api.vendor.example")
	shots.take(ctx, "top")
	must(t, chromedp.Do(ctx, chromedp.Navigate(g.admin+"/ui/domains?group=payments")))
	waitText("the domain table", "document.querySelector('main').innerText", "docs.example")
	shots.take(ctx, "domains")

	// Suggestions: the wildcard for the assets siblings, and the copy
	// button.
	must(t, chromedp.Do(ctx, chromedp.Navigate(g.admin+"/ui/suggest?group=payments")))
	waitText("the suggestions", "document.getElementById('yaml').value", "*.assets.example")
	must(t, chromedp.Do(ctx, chromedp.Click(chromedp.CSS("#copy"))))
	waitText("the copy button to answer", "document.getElementById('copy-status').textContent", "opied")
	must(t, chromedp.Do(ctx, chromedp.Evaluate[chromedp.Void]("window.scrollTo(0, 0)")))
	shots.take(ctx, "suggest")

	// Explain, through the same code as /v1/explain.
	must(t, chromedp.Do(ctx, chromedp.Navigate(g.admin+"/ui/explain?from=127.0.0.1&to=docs.example:443")))
	waitText("the explanation", "document.querySelector('main').innerText", "Verdict: allow")
	shots.take(ctx, "explain")

	// Logging out ends the session.
	must(t, chromedp.Do(ctx, chromedp.Navigate(g.admin+"/ui/rules"), chromedp.Click(chromedp.CSS(".logout button"))))
	waitText("the log-out", "document.title", "Log in")
	must(t, chromedp.Do(ctx, chromedp.Navigate(g.admin+"/ui/rules")))
	waitText("the console to ask for the token again", "location.pathname", "/ui/login")
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// waitFor polls cond until it holds, generously: the machine is shared.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// shots saves screenshots under the test's artifact directory and, when
// asked, into docs/adopting for the adoption guide.
type shots struct {
	t    *testing.T
	dirs []string
}

func newShots(t *testing.T, docs string) *shots {
	s := &shots{t: t, dirs: []string{t.ArtifactDir()}}
	if *updateScreenshots || os.Getenv("UPDATE_SCREENSHOTS") == "1" {
		s.dirs = append(s.dirs, docs)
	}
	return s
}

func (s *shots) take(ctx context.Context, name string) {
	s.t.Helper()
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		s.t.Fatalf("screenshot %s: %v", name, err)
	}
	for _, d := range s.dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			s.t.Fatal(err)
		}
		p := filepath.Join(d, "console-"+name+".png")
		if err := os.WriteFile(p, png, 0o644); err != nil {
			s.t.Fatal(err)
		}
		s.t.Logf("screenshot %s", p)
	}
}
