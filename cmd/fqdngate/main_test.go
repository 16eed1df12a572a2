package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
	"github.com/fqdngate/fqdngate/internal/testutil/syncbuf"
)

// binary is the fqdngate built once for the tests that run it as a process.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "fqdngate-bin")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "fqdngate")
	// The decision history, on by default, goes here, not to the
	// machine's state directory.
	os.Setenv("STATE_DIRECTORY", dir)
	// Built as released: static, without cgo (which capability dropping
	// across all threads needs).
	build := exec.Command("go", "build", "-o", binary, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := build.CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building fqdngate: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func runCLI(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var o, e bytes.Buffer
	code = run(context.Background(), args, &o, &e)
	return o.String(), e.String(), code
}

func writePolicy(t *testing.T, dir, body string) string {
	t.Helper()
	p := filepath.Join(dir, "policy.yaml")
	// Write then rename, as editors and config management do.
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, p); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCheckQuickstart(t *testing.T) {
	out, errOut, code := runCLI(t, "check", "-c", "../../examples/quickstart.yaml")
	if code != 0 {
		t.Fatalf("check quickstart: exit %d, stderr %q", code, errOut)
	}
	if !strings.Contains(out, ": ok: 2 rules") {
		t.Errorf("got summary %q, want it to count 2 rules", out)
	}
}

// check shows the upstreams as the daemon will use them, DNS-over-HTTPS
// included, and refuses one it cannot use with its position.
func TestCheckUpstreams(t *testing.T) {
	dir := t.TempDir()
	p := writePolicy(t, dir, "dns:\n  upstreams: [192.0.2.53, \"https://doh.example@192.0.2.54/dns-query{?dns}\"]\n")
	out, errOut, code := runCLI(t, "check", "-c", p, "--host=false")
	if want := "upstreams [192.0.2.53:53 https://doh.example@192.0.2.54:443/dns-query{?dns}]"; code != 0 || !strings.Contains(out, want) {
		t.Errorf("got exit %d, %q, stderr %q; want exit 0 and %q", code, out, errOut, want)
	}
	p = writePolicy(t, dir, "dns:\n  upstreams: [\"http://doh.example@192.0.2.54/dns-query\"]\n")
	_, errOut, code = runCLI(t, "check", "-c", p, "--host=false")
	if want := p + ":2:15: dns.upstreams: \"http://doh.example@192.0.2.54/dns-query\": plain http:// would send queries"; code != 1 || !strings.Contains(errOut, want) {
		t.Errorf("got exit %d, stderr %q; want exit 1 and %q", code, errOut, want)
	}
}

func TestCheckReportsEveryError(t *testing.T) {
	p := writePolicy(t, t.TempDir(), `mode: enforced
listen: {dns: "127.0.0.1:5353", admn: ""}
rules:
  - name: a
    to: ["api.*.example"]
    ports: [70000]
  - name: a
    from: [nobody]
    to: [b.example]
`)
	_, errOut, code := runCLI(t, "check", "-c", p)
	if code != 1 {
		t.Fatalf("got exit %d, want 1", code)
	}
	want := []string{
		p + ":1:7: mode must be enforce or audit",
		p + `:2:33: unknown key "admn" in listen; did you mean "admin"?`,
		p + `:5:10: rule "a": "api.*.example": '*' may only stand as the whole first label`,
		p + `:6:13: rule "a": port "70000" is out of range`,
		p + `:7:11: rule name "a" is already used at line 4`,
		p + `:8:12: rule "a": source group "nobody" is not defined under sources`,
	}
	lines := strings.Split(strings.TrimSpace(errOut), "\n")
	if len(lines) != len(want) {
		t.Errorf("got %d error lines, want %d:\n%s", len(lines), len(want), errOut)
	}
	for i, w := range want {
		if i < len(lines) && !strings.HasPrefix(lines[i], w) {
			t.Errorf("line %d:\n got %q\nwant prefix %q", i+1, lines[i], w)
		}
	}
}

// TestCheckStateFileDirectory: a state file in a directory that does not
// exist is one positioned error from check, the same error run refuses
// to start with (it used to be a warning every half second). run is
// tried in a namespace of its own, so that a run that does start cannot
// touch the host's firewall.
func TestCheckStateFileDirectory(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing")
	p := writePolicy(t, dir, `listen: {dns: "127.0.0.1:5353", proxy: "", admin: ""}
dns: {upstreams: [192.0.2.53]}
firewall:
  backend: nftables
  state_file: `+filepath.Join(missing, "state.json")+`
`)
	want := p + ":5:15: firewall.state_file: the directory " + missing + " does not exist: create it, writable by the user fqdngate runs as"
	_, errOut, code := runCLI(t, "check", "-c", p)
	if code != 1 || !strings.Contains(errOut, want) || strings.Count(errOut, "does not exist") != 1 {
		t.Errorf("check: exit %d, stderr:\n%s\nwant exit 1 and one line containing %q", code, errOut, want)
	}
	// --host=false checks the policy alone, as a CI job on another machine
	// than the gateways needs.
	if out, errOut, code := runCLI(t, "check", "-c", p, "--host=false"); code != 0 || !strings.Contains(out, ": ok:") {
		t.Errorf("check --host=false: exit %d, stdout %q, stderr:\n%s\nwant exit 0 and ok", code, out, errOut)
	}
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI runs as root; this test must run there")
		}
		t.Skip("needs root for run in a network namespace")
	}
	ns := fmt.Sprintf("fqdngate-statedir-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", ns, binary, "run", "-c", p).CombinedOutput()
	if ctx.Err() != nil || err == nil || !strings.Contains(string(out), want) {
		t.Errorf("run: %v, output:\n%s\nwant it to refuse to start with %q", err, out, want)
	}
}

// TestCheckTransparentSteering: check refuses, positioned, a transparent
// listener the kernel cannot steer every source's family to, and says
// what to write; the run it stands for refuses the same policy.
func TestCheckTransparentSteering(t *testing.T) {
	for _, tt := range []struct {
		name, listen, hook string
		want               string
	}{
		{"loopback on a gateway", "127.0.0.1:3129", "forward", ":2:43: listen.transparent 127.0.0.1:3129 is on loopback, where the kernel cannot steer forwarded connections (firewall.hook: forward); listen on [::]:3129"},
		{"IPv4 only", "192.0.2.1:3129", "forward", ":2:43: listen.transparent 192.0.2.1:3129 cannot receive IPv6 connections to firewall.transparent_ports (such as 443), and source group \"office\" of rule \"web\" has IPv6 addresses; listen on [::]:3129 to steer both families"},
		{"IPv4 loopback on a host", "127.0.0.1:3129", "output", ":2:43: listen.transparent 127.0.0.1:3129 cannot receive IPv6 connections"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := writePolicy(t, t.TempDir(), `dns: {upstreams: [192.0.2.53]}
listen: {dns: "", proxy: "", transparent: "`+tt.listen+`"}
firewall: {backend: nftables, hook: `+tt.hook+`, transparent_ports: [443]}
sources:
  office: [192.0.2.0/24, "2001:db8:1::/64"]
rules:
  - name: web
    from: [office]
    to: [example.com]
`)
			for _, cmd := range [][]string{{"check", "-c", p}, {"run", "-c", p, "--dry-run"}} {
				_, errOut, code := runCLI(t, cmd...)
				if code != 1 || !strings.Contains(errOut, p+tt.want) {
					t.Errorf("%s: exit %d, stderr:\n%s\nwant exit 1 and %q", cmd[0], code, errOut, p+tt.want)
				}
			}
		})
	}
}

func TestExplainJSON(t *testing.T) {
	p := writePolicy(t, t.TempDir(), `listen: {dns: "", proxy: "", admin: ""}
sources:
  payments: [10.1.0.0/24]
  others: [10.9.0.0/24]
rules:
  - name: bank-api
    from: [payments]
    to: [api.bank.example]
`)
	cases := []struct {
		from, to         string
		action, rule     string
		code             int
		reasonContaining string
	}{
		{"10.1.0.7", "api.bank.example:443", "allow", "bank-api", 0, "matched"},
		{"10.1.0.7", "API.Bank.Example.", "allow", "bank-api", 0, "matched"},
		{"10.9.0.7", "api.bank.example:443", "deny", "", 1, "not for this source"},
		{"10.1.0.7", "api.bank.example:80", "deny", "", 1, "not on this port"},
		{"10.1.0.7", "evil.example:443", "deny", "", 1, "no rule"},
		{"203.0.113.9", "api.bank.example:443", "deny", "", 1, "not served: 203.0.113.9 is outside the inside (inside: source groups others, payments)"},
		{"127.0.0.1", "evil.example:443", "deny", "", 1, "no rule"},
	}
	for _, c := range cases {
		out, errOut, code := runCLI(t, "explain", "-c", p, "--from", c.from, "--to", c.to, "--json")
		if code != c.code {
			t.Errorf("explain %s -> %s: got exit %d, want %d (%s)", c.from, c.to, code, c.code, errOut)
		}
		var res struct{ Action, Rule, Reason string }
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatalf("explain --json printed %q: %v", out, err)
		}
		if res.Action != c.action || res.Rule != c.rule || !strings.Contains(res.Reason, c.reasonContaining) {
			t.Errorf("explain %s -> %s: got %+v, want action %s rule %q reason containing %q", c.from, c.to, res, c.action, c.rule, c.reasonContaining)
		}
	}
}

func TestUsage(t *testing.T) {
	for _, args := range [][]string{{"run", "--help"}, {"check", "--help"}, {"explain", "--help"}, {"--help"}, {"firewall", "--help"}} {
		out, _, code := runCLI(t, args...)
		if code != 0 || !strings.Contains(out, "NAME") || !strings.Contains(out, "SYNOPSIS") {
			t.Errorf("%v: got exit %d and %q, want a man-page style help", args, code, out)
		}
	}
	if _, _, code := runCLI(t, "frobnicate"); code != 2 {
		t.Errorf("unknown command: got exit %d, want 2", code)
	}
	if out, _, code := runCLI(t, "version"); code != 0 || !strings.HasPrefix(out, "fqdngate ") {
		t.Errorf("version: got %d %q", code, out)
	}
}

// daemonProc is fqdngate running as a child process.
type daemonProc struct {
	cmd   *exec.Cmd
	admin string
	dns   string // the DNS listener's address, when it has one
	mu    sync.Mutex
	log   bytes.Buffer
	out   syncBuffer // standard output: the audit log
}

type syncBuffer = syncbuf.Buffer

func startDaemon(t *testing.T, policyPath string) *daemonProc {
	t.Helper()
	return startBinary(t, binary, policyPath)
}

// startBinary runs the fqdngate at bin on policyPath.
func startBinary(t *testing.T, bin, policyPath string) *daemonProc {
	t.Helper()
	return startBinaryEnv(t, bin, policyPath)
}

// startBinaryEnv is startBinary with env added to fqdngate's environment.
func startBinaryEnv(t *testing.T, bin, policyPath string, env ...string) *daemonProc {
	t.Helper()
	d := &daemonProc{cmd: exec.Command(bin, "run", "-c", policyPath)}
	d.cmd.Env = append(os.Environ(), env...)
	stderr, err := d.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	d.cmd.Stdout = &d.out
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	addrc := make(chan string, 1)
	exited := make(chan struct{})
	// Not "stopped listening": a moved listener's new address is logged
	// before its old one stops.
	re := regexp.MustCompile(`msg=listening component=admin addr=(\S+)`)
	dnsRe := regexp.MustCompile(`msg=listening component=dns addr=(\S+)`)
	go func() {
		defer close(exited)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			d.mu.Lock()
			d.log.WriteString(sc.Text() + "\n")
			d.mu.Unlock()
			if m := dnsRe.FindStringSubmatch(sc.Text()); m != nil {
				d.mu.Lock()
				d.dns = m[1]
				d.mu.Unlock()
			}
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				d.mu.Lock()
				d.admin = m[1]
				d.mu.Unlock()
			}
			// Logged once every listener serves.
			if strings.Contains(sc.Text(), `msg="policy loaded"`) {
				d.mu.Lock()
				addrc <- d.admin
				d.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() {
		_ = d.cmd.Process.Kill()
		_ = d.cmd.Wait()
	})
	select {
	case d.admin = <-addrc:
	case <-exited:
		t.Fatalf("fqdngate exited at start; stderr:\n%s", d.logs())
	case <-time.After(20 * time.Second):
		t.Fatalf("fqdngate did not start its admin listener; stderr:\n%s", d.logs())
	}
	return d
}

func (d *daemonProc) logs() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.log.String()
}

func (d *daemonProc) get(t *testing.T, path string) string {
	t.Helper()
	resp, err := http.Get("http://" + d.admin + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func (d *daemonProc) explainAction(t *testing.T, from, to string) string {
	t.Helper()
	var res struct{ Action string }
	body := d.get(t, "/v1/explain?from="+from+"&to="+to)
	if err := json.Unmarshal([]byte(body), &res); err != nil {
		t.Fatalf("/v1/explain: %q: %v", body, err)
	}
	return res.Action
}

// waitMetric polls /metrics until the series reaches at least min. Both
// SIGHUP and the file watcher may reload, so counts are lower bounds.
func (d *daemonProc) waitMetric(t *testing.T, series string, min float64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, line := range strings.Split(d.get(t, "/metrics"), "\n") {
			var v float64
			if rest, ok := strings.CutPrefix(line, series+" "); ok {
				if _, err := fmt.Sscan(rest, &v); err == nil && v >= min {
					return
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("metric %s never reached %v; stderr:\n%s", series, min, d.logs())
}

// metric reads one series from /metrics; -1 if it is absent.
func (d *daemonProc) metric(t *testing.T, series string) float64 {
	t.Helper()
	for _, line := range strings.Split(d.get(t, "/metrics"), "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			var v float64
			if _, err := fmt.Sscan(rest, &v); err == nil {
				return v
			}
		}
	}
	return -1
}

// TestBuildsStamp: every way the repository builds fqdngate for release
// (make build, make image and the Dockerfile under it, the systemd unit's
// install note) sets main.version and main.revision, which TestBuildInfo
// shows reach the binary.
func TestBuildsStamp(t *testing.T) {
	for _, f := range []struct{ file, want string }{
		{"../../Makefile", `-X main.version=$(VERSION) -X main.revision=$(REVISION)`},
		{"../../Makefile", `--build-arg VERSION=$(VERSION) --build-arg REVISION=$(REVISION)`},
		{"../../deploy/kubernetes/Dockerfile", `-X main.version=${VERSION} -X main.revision=${REVISION}`},
		{"../../Makefile", "deb: build "},
		{"../../deploy/systemd/fqdngate.service", `make build && install -m 0755 fqdngate /usr/local/bin/fqdngate`},
	} {
		b, err := os.ReadFile(f.file)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), f.want) {
			t.Errorf("%s lacks %s", f.file, f.want)
		}
	}
}

// TestBuildInfo: the version and revision the Makefile sets with -ldflags
// reach fqdngate_build_info, with the Go version.
func TestBuildInfo(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "fqdngate")
	build := exec.Command("go", "build", "-ldflags", "-X main.version=v1.2.3-buildinfo -X main.revision=0123456789abcdef0123456789abcdef01234567", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building fqdngate: %v\n%s", err, out)
	}
	d := startBinary(t, bin, writePolicy(t, t.TempDir(), policyV1))
	re := regexp.MustCompile(`(?m)^fqdngate_build_info\{goversion="` + regexp.QuoteMeta(runtime.Version()) + `",revision="0123456789abcdef0123456789abcdef01234567",version="v1\.2\.3-buildinfo"\} 1$`)
	if body := d.get(t, "/metrics"); !re.MatchString(body) {
		var got []string
		for _, l := range strings.Split(body, "\n") {
			if strings.HasPrefix(l, "fqdngate_build_info") {
				got = append(got, l)
			}
		}
		t.Errorf("fqdngate_build_info: got %q, want version v1.2.3-buildinfo, goversion %s and the revision", got, runtime.Version())
	}
}

const policyV1 = `listen: {dns: "", proxy: "", admin: "127.0.0.1:0"}
rules:
  - name: first
    to: [a.example]
`

const policyV2 = `listen: {dns: "", proxy: "", admin: "127.0.0.1:0"}
rules:
  - name: second
    to: [b.example]
`

func TestReloadOnSIGHUP(t *testing.T) {
	dir := t.TempDir()
	p := writePolicy(t, dir, policyV1)
	d := startDaemon(t, p)
	if got := d.explainAction(t, "127.0.0.1", "a.example"); got != "allow" {
		t.Fatalf("a.example under v1: got %s, want allow", got)
	}

	// A broken file: the reload fails and the old policy still decides.
	writePolicy(t, dir, "rules:\n  - name: broken\n    to: [\"*.com\"]\n")
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	d.waitMetric(t, `fqdngate_policy_reloads_total{result="failure"}`, 1)
	if got := d.explainAction(t, "127.0.0.1", "a.example"); got != "allow" {
		t.Errorf("after a broken reload: a.example got %s, want allow (old policy in force)", got)
	}
	if got := d.metric(t, `fqdngate_config_last_reload_successful`); got != 0 {
		t.Errorf("fqdngate_config_last_reload_successful = %v after a broken reload, want 0", got)
	}
	loadedAt := d.metric(t, `fqdngate_config_last_reload_success_timestamp_seconds`)
	if now := float64(time.Now().Unix()); loadedAt < now-60 || loadedAt > now+1 {
		t.Errorf("fqdngate_config_last_reload_success_timestamp_seconds = %v, want the start, about %v", loadedAt, now)
	}
	if !strings.Contains(d.logs(), "previous policy stays in force") || !strings.Contains(d.logs(), "policy.yaml:3:") {
		t.Errorf("the rejected reload was not logged with its position; stderr:\n%s", d.logs())
	}

	// A good file: the new policy decides.
	writePolicy(t, dir, policyV2)
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	d.waitMetric(t, `fqdngate_policy_generation`, 2)
	if got := d.explainAction(t, "127.0.0.1", "a.example"); got != "deny" {
		t.Errorf("after reload: a.example got %s, want deny", got)
	}
	if got := d.metric(t, `fqdngate_config_last_reload_successful`); got != 1 {
		t.Errorf("fqdngate_config_last_reload_successful = %v after a good reload, want 1", got)
	}
	if got := d.metric(t, `fqdngate_config_last_reload_success_timestamp_seconds`); got <= loadedAt {
		t.Errorf("fqdngate_config_last_reload_success_timestamp_seconds = %v after a good reload, want later than %v", got, loadedAt)
	}
	if got := d.explainAction(t, "127.0.0.1", "b.example"); got != "allow" {
		t.Errorf("after reload: b.example got %s, want allow", got)
	}

	// SIGTERM: clean exit 0.
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- d.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("after SIGTERM: %v, want exit 0; stderr:\n%s", err, d.logs())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("fqdngate did not exit within 15s of SIGTERM")
	}
}

func TestReloadOnFileChange(t *testing.T) {
	dir := t.TempDir()
	p := writePolicy(t, dir, policyV1)
	d := startDaemon(t, p)
	writePolicy(t, dir, policyV2)
	d.waitMetric(t, `fqdngate_policy_generation`, 2)
	if got := d.explainAction(t, "127.0.0.1", "b.example"); got != "allow" {
		t.Errorf("after the file changed: b.example got %s, want allow", got)
	}
	if got := d.get(t, "/readyz"); got != "ready\n" {
		t.Errorf("/readyz: got %q", got)
	}
}

func TestRunRejectsBrokenPolicy(t *testing.T) {
	p := writePolicy(t, t.TempDir(), "rules: [{name: x}]\n")
	_, errOut, code := runCLI(t, "run", "-c", p)
	if code != 1 || !strings.Contains(errOut, "has no targets") {
		t.Errorf("got exit %d, stderr %q; want exit 1 naming the problem", code, errOut)
	}
}

// TestDropsCapabilities runs fqdngate as root and reads its capability sets
// from /proc: after start only CAP_NET_BIND_SERVICE may remain (the policy
// has no nftables backend).
func TestDropsCapabilities(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI runs as root; this test must run there")
		}
		t.Skip("needs root: checks that fqdngate drops root's capabilities")
	}
	p := writePolicy(t, t.TempDir(), policyV1)
	d := startDaemon(t, p)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(d.logs(), "dropped capabilities") {
		if time.Now().After(deadline) {
			t.Fatalf("no 'dropped capabilities' line; stderr:\n%s", d.logs())
		}
		time.Sleep(20 * time.Millisecond)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", d.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"CapEff": "0000000000000400", "CapPrm": "0000000000000400", "CapBnd": "0000000000000400", "CapAmb": "0000000000000000", "NoNewPrivs": "1"}
	for _, line := range strings.Split(string(status), "\n") {
		k, v, _ := strings.Cut(line, ":")
		if w, ok := want[k]; ok && strings.TrimSpace(v) != w {
			t.Errorf("%s: got %s, want %s", k, strings.TrimSpace(v), w)
		}
	}
	// Every thread, not only the main one.
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", d.cmd.Process.Pid))
	for _, task := range tasks {
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", d.cmd.Process.Pid, task.Name()))
		if err != nil {
			continue
		}
		if !strings.Contains(string(st), "CapEff:\t0000000000000400") {
			t.Errorf("thread %s kept other capabilities", task.Name())
		}
	}
}

func TestDryRunPrintsRuleset(t *testing.T) {
	p := writePolicy(t, t.TempDir(), `listen: {dns: "127.0.0.1:5353", proxy: "", admin: ""}
dns: {upstreams: [192.0.2.53]}
firewall: {backend: nftables, hook: output, table: drytest}
sources:
  payments: [198.51.100.0/24]
rules:
  - name: bank-api
    from: [payments]
    to: [api.bank.example]
  - name: partner-db
    to: [203.0.113.0/24]
    ports: [5432]
`)
	out, errOut, code := runCLI(t, "run", "-c", p, "--dry-run")
	if code != 0 {
		t.Fatalf("dry-run: exit %d: %s", code, errOut)
	}
	for _, w := range []string{"table inet drytest", "hook output", "198.51.100.0/24", "203.0.113.0/24", "dport 5432", "bank-api"} {
		if !strings.Contains(out, w) {
			t.Errorf("dry-run output lacks %q:\n%s", w, out)
		}
	}
	// The ruleset must be one nft accepts; check it without applying when
	// nft is installed.
	if nft, err := exec.LookPath("nft"); err == nil && os.Geteuid() == 0 {
		f := filepath.Join(t.TempDir(), "ruleset.nft")
		if err := os.WriteFile(f, []byte(out), 0o644); err != nil {
			t.Fatal(err)
		}
		if b, err := exec.Command(nft, "-c", "-f", f).CombinedOutput(); err != nil {
			t.Errorf("nft -c rejects the dry-run ruleset: %v\n%s", err, b)
		}
	}
}

// TestFirewallShowRemove programs a table through the daemon's backend in a
// fresh network namespace, then shows and removes it with the CLI.
func TestFirewallShowRemove(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI runs as root; this test must run there")
		}
		t.Skip("needs root: creates a network namespace and an nftables table")
	}
	ns := fmt.Sprintf("fqdngate-cli-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	dir := t.TempDir()
	p := writePolicy(t, dir, `listen: {dns: "127.0.0.1:5353", proxy: "", admin: "127.0.0.1:0"}
dns: {upstreams: [192.0.2.53]}
firewall: {backend: nftables, hook: output, table: clitest, state_file: `+filepath.Join(dir, "state.json")+`}
rules:
  - name: partner-db
    to: [203.0.113.0/24]
    ports: [5432]
`)
	inNS := func(args ...string) (string, error) {
		b, err := exec.Command("ip", append([]string{"netns", "exec", ns, binary}, args...)...).CombinedOutput()
		return string(b), err
	}
	cmd := exec.Command("ip", "netns", "exec", ns, binary, "run", "-c", p)
	var logs bytes.Buffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	deadline := time.Now().Add(15 * time.Second)
	for {
		out, err := inNS("firewall", "show", "--table", "clitest")
		if err == nil && strings.Contains(out, "cidr4.partner-db") && strings.Contains(out, "tcp th dport 5432 accept") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("table never appeared: %v %s\ndaemon: %s", err, out, logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The daemon watches its table: remove under it is undone at once,
	// and remove says so.
	if out, err := inNS("firewall", "remove", "-c", p); err == nil || !strings.Contains(out, "a running fqdngate put table inet clitest back at once") {
		t.Errorf("remove under a running daemon: %v %s; want exit 1 saying the daemon put the table back", err, out)
	}
	if out, err := inNS("firewall", "show", "-c", p); err != nil || !strings.Contains(out, "tcp th dport 5432 accept") {
		t.Errorf("after remove under a running daemon the table should be back: %v %s", err, out)
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	_ = cmd.Wait()
	// The table outlives the process: enforcement does not lapse on exit.
	if out, err := inNS("firewall", "show", "-c", p); err != nil || !strings.Contains(out, "clitest") {
		t.Fatalf("after exit the table should remain: %v %s", err, out)
	}
	if out, err := inNS("firewall", "remove", "-c", p); err != nil || !strings.Contains(out, "removed table inet clitest") {
		t.Fatalf("remove: %v %s", err, out)
	}
	if b, _ := exec.Command("ip", "netns", "exec", ns, "nft", "list", "tables").CombinedOutput(); strings.Contains(string(b), "clitest") {
		t.Errorf("table still there after remove: %s", b)
	}
}

// TestAuditTrail resolves through the running daemon and reads its audit
// log: one JSON line per decision, with the fields an assessor needs.
func TestAuditTrail(t *testing.T) {
	up := dnstest.NewServer(t, dnstest.Zone(dnstest.A("api.bank.example.", 300, "192.0.2.10")))
	p := writePolicy(t, t.TempDir(), `listen: {dns: "127.0.0.1:0", proxy: "", admin: "127.0.0.1:0"}
dns: {upstreams: [`+up.Addr.String()+`]}
rules:
  - name: bank-api
    to: [api.bank.example]
`)
	d := startDaemon(t, p)
	d.mu.Lock()
	dnsAddr := d.dns
	d.mu.Unlock()
	c := new(dns.Client)
	for _, q := range []struct {
		name  string
		qtype uint16
		rcode int
	}{
		{"api.bank.example.", dns.TypeA, dns.RcodeSuccess},
		{"exfil-data.attacker.example.", dns.TypeA, dns.RcodeNameError},
		{"api.bank.example.", dns.TypeTXT, dns.RcodeRefused},
	} {
		r, _, err := c.Exchange(new(dns.Msg).SetQuestion(q.name, q.qtype), dnsAddr)
		if err != nil {
			t.Fatalf("query %s: %v", q.name, err)
		}
		if r.Rcode != q.rcode {
			t.Errorf("query %s %s: got %s, want %s", q.name, dns.TypeToString[q.qtype], dns.RcodeToString[r.Rcode], dns.RcodeToString[q.rcode])
		}
	}
	if n := len(up.Queries()); n != 1 {
		t.Errorf("upstream saw %d queries, want 1: denied and refused queries must never leave", n)
	}
	var lines []map[string]any
	deadline := time.Now().Add(5 * time.Second)
	for len(lines) < 3 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond) // the audit log is flushed every 100ms
		lines = lines[:0]
		for _, l := range strings.Split(strings.TrimSpace(d.out.String()), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == "decision" {
				lines = append(lines, m)
			}
		}
	}
	if len(lines) != 3 {
		t.Fatalf("got %d decision lines, want 3:\n%s", len(lines), d.out.String())
	}
	want := []map[string]any{
		{"component": "dns", "source": "127.0.0.1", "name": "api.bank.example", "qtype": "A", "action": "allow", "rule": "bank-api"},
		{"component": "dns", "name": "exfil-data.attacker.example", "qtype": "A", "action": "deny", "rule": "", "reason": "no rule allows this destination"},
		{"component": "dns", "name": "api.bank.example", "qtype": "TXT", "action": "deny"},
	}
	// A line is written after its answer, so the client's next query may
	// be logged first: find each line by name and type.
	for i, w := range want {
		var line map[string]any
		for _, l := range lines {
			if l["name"] == w["name"] && l["qtype"] == w["qtype"] {
				line = l
			}
		}
		if line == nil {
			t.Errorf("no line for %s %s:\n%s", w["name"], w["qtype"], d.out.String())
			continue
		}
		for k, v := range w {
			if line[k] != v {
				t.Errorf("line %d: %s = %v, want %v", i+1, k, line[k], v)
			}
		}
		if _, ok := line["time"]; !ok {
			t.Errorf("line %d has no time", i+1)
		}
	}
}

// TestReloadKeepsListeners: a reload that leaves listen.* alone keeps every
// listener (same socket, no restart); one that changes an address moves
// just that listener.
func TestReloadKeepsListeners(t *testing.T) {
	up := dnstest.NewServer(t, dnstest.Zone(dnstest.A("a.example.", 300, "192.0.2.10"), dnstest.A("b.example.", 300, "192.0.2.11")))
	dir := t.TempDir()
	policyAt := func(dnsListen, rule string) string {
		return `listen: {dns: "` + dnsListen + `", proxy: "", admin: "127.0.0.1:0"}
dns: {upstreams: [` + up.Addr.String() + `]}
rules:
  - name: r
    to: [` + rule + `]
`
	}
	p := writePolicy(t, dir, policyAt("127.0.0.1:0", "a.example"))
	d := startDaemon(t, p)
	d.mu.Lock()
	first := d.dns
	d.mu.Unlock()
	rcode := func(addr, name string) int {
		r, _, err := new(dns.Client).Exchange(new(dns.Msg).SetQuestion(name, dns.TypeA), addr)
		if err != nil {
			t.Fatalf("query %s at %s: %v", name, addr, err)
		}
		return r.Rcode
	}
	if got := rcode(first, "a.example."); got != dns.RcodeSuccess {
		t.Fatalf("a.example: got %s", dns.RcodeToString[got])
	}

	writePolicy(t, dir, policyAt("127.0.0.1:0", "b.example"))
	d.waitMetric(t, `fqdngate_policy_generation`, 2)
	if got := rcode(first, "b.example."); got != dns.RcodeSuccess {
		t.Errorf("after reload, b.example on the same socket: got %s, want NOERROR", dns.RcodeToString[got])
	}
	if strings.Contains(d.logs(), "stopped listening") {
		t.Errorf("a reload with unchanged listen addresses restarted a listener:\n%s", d.logs())
	}

	writePolicy(t, dir, policyAt("127.0.0.2:0", "b.example"))
	d.waitMetric(t, `fqdngate_policy_generation`, 3)
	deadline := time.Now().Add(5 * time.Second)
	var moved string
	for moved == "" && time.Now().Before(deadline) {
		d.mu.Lock()
		if d.dns != first {
			moved = d.dns
		}
		d.mu.Unlock()
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.HasPrefix(moved, "127.0.0.2:") {
		t.Fatalf("the DNS listener did not move to 127.0.0.2; logs:\n%s", d.logs())
	}
	if got := rcode(moved, "b.example."); got != dns.RcodeSuccess {
		t.Errorf("at the new address: got %s", dns.RcodeToString[got])
	}
	if _, _, err := (&dns.Client{Timeout: 300 * time.Millisecond}).Exchange(new(dns.Msg).SetQuestion("b.example.", dns.TypeA), first); err == nil {
		t.Errorf("the old address %s still answers after the listener moved", first)
	}
}

// TestCheckTenMistakes: `fqdngate check` on a policy with ten distinct
// mistakes prints all ten, positioned, as the policy package's golden file
// records them, and exits 1.
func TestCheckTenMistakes(t *testing.T) {
	golden, err := os.ReadFile("../../internal/policy/testdata/ten-mistakes.golden")
	if err != nil {
		t.Fatal(err)
	}
	// The golden file names the policy relative to internal/policy.
	want := strings.ReplaceAll(string(golden), "testdata/ten-mistakes.yaml", "../../internal/policy/testdata/ten-mistakes.yaml")
	out, errOut, code := runCLI(t, "check", "-c", "../../internal/policy/testdata/ten-mistakes.yaml")
	if code != 1 || out != "" {
		t.Errorf("got exit %d and stdout %q, want exit 1 and nothing on stdout", code, out)
	}
	if n := strings.Count(strings.TrimSpace(errOut), "\n") + 1; n != 10 {
		t.Errorf("got %d error lines, want 10", n)
	}
	if strings.TrimSpace(errOut) != strings.TrimSpace(want) {
		t.Errorf("check output differs from the golden file:\n got:\n%s\nwant:\n%s", errOut, want)
	}
}
