package daemon

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/resolver"
	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
	"github.com/fqdngate/fqdngate/internal/testutil/netns"
	"github.com/fqdngate/fqdngate/internal/testutil/syncbuf"
)

// The reload tests run the daemon in-process, its sockets and its nftables
// table in a network namespace the test creates (hook output: the
// namespace is the host), and its upstream resolvers on the test's
// loopback (the resolver's sockets are opened by goroutines outside the
// namespace). A veth pair gives the namespace an "outside" address,
// so DNS sent to any resolver goes through the kernel's redirect.
const (
	// outsideDNS is a resolver address clients might use; the kernel
	// redirects DNS to it to fqdngate's listener.
	outsideDNS = "192.0.2.53:53"
	// wait bounds every exchange with the daemon; generous for -race on a
	// loaded machine.
	wait = 5 * time.Second
)

// addrs are one policy's listener addresses.
type addrs struct{ dns, proxy, admin string }

// Listener addresses of the two policies: the namespace is the test's
// own, so fixed ports never collide.
var (
	addrsV1 = addrs{dns: "127.0.0.1:5301", proxy: "127.0.0.1:3101", admin: "127.0.0.1:9101"}
	addrsV2 = addrs{dns: "127.0.0.1:5302", proxy: "127.0.0.1:3102", admin: "127.0.0.1:9102"}
)

// settings render a policy.
type settings struct {
	listen    addrs
	upstream  netip.AddrPort
	table     string
	logFile   string
	rule      string // the name of the only rule, which allows <rule>.example
	cacheSize int
	logFormat string
	stateFile string
	// forward, if valid, is the server of the forward zone corp.example.
	forward netip.AddrPort
	extra   string // appended as is: more top-level sections
}

func (s settings) render() string {
	fwd := ""
	if s.forward.IsValid() {
		fwd = fmt.Sprintf("  forward: [{zone: corp.example, to: [%q]}]\n", s.forward)
	}
	return fmt.Sprintf(`listen: {dns: %q, proxy: %q, admin: %q}
dns:
  upstreams: [%q]
  cache: false # every query reaches the upstream in force
  cache_size: %d
%sfirewall: {backend: nftables, hook: output, table: %s, state_file: %q}
log: {file: %q, format: %s}
rules:
  - name: %s
    to: [%s.example]
%s`, s.listen.dns, s.listen.proxy, s.listen.admin, s.upstream.String(), s.cacheSize, fwd, s.table, s.stateFile, s.logFile, s.logFormat, s.rule, s.rule, s.extra)
}

// world is a namespace, two upstream resolvers that know different
// names, and the policy file a daemon reads.
type world struct {
	t      *testing.T
	ns     *netns.NS
	dir    string
	path   string
	up1    *dnstest.Server // knows old.example
	up2    *dnstest.Server // knows new.example
	v1, v2 settings
	log    syncBuffer // the daemon's operational log
	// before is the kernel's table under v1.
	before string
}

var tableSeq int

func newWorld(t *testing.T) *world {
	t.Helper()
	w := &world{t: t, ns: netns.New(t), dir: t.TempDir()}
	w.ns.IP("link", "add", "o0", "type", "veth", "peer", "name", "o1")
	w.ns.IP("link", "set", "o1", "up")
	w.ns.Addr("o0", "192.0.2.1/24")
	w.path = filepath.Join(w.dir, "policy.yaml")
	zone := dnstest.Zone(dnstest.A("old.example.", 300, "192.0.2.10"), dnstest.A("new.example.", 300, "192.0.2.20"))
	w.up1, w.up2 = dnstest.NewServer(t, zone), dnstest.NewServer(t, zone)
	tableSeq++
	table := fmt.Sprintf("reload_%d_%d", os.Getpid(), tableSeq)
	w.v1 = settings{listen: addrsV1, upstream: w.up1.Addr, table: table, logFile: filepath.Join(w.dir, "audit-1.log"), rule: "old", cacheSize: 1000, logFormat: "json", stateFile: filepath.Join(w.dir, "state-1.json")}
	w.v2 = settings{listen: addrsV2, upstream: w.up2.Addr, table: table, logFile: filepath.Join(w.dir, "audit-2.log"), rule: "new", cacheSize: 2000, logFormat: "text", stateFile: filepath.Join(w.dir, "state-2.json")}
	return w
}

func (w *world) write(s settings) {
	w.t.Helper()
	tmp := w.path + ".tmp"
	if err := os.WriteFile(tmp, []byte(s.render()), 0o644); err != nil {
		w.t.Fatal(err)
	}
	if err := os.Rename(tmp, w.path); err != nil {
		w.t.Fatal(err)
	}
}

// start runs a daemon on s in the namespace, stopped when the test ends.
func (w *world) start(s settings) *Daemon {
	w.t.Helper()
	w.write(s)
	d := newDaemon(Options{
		PolicyPath: w.path,
		Logger:     slog.New(slog.NewTextHandler(&w.log, nil)),
		Version:    "v0.0.0-test",
	})
	ctx, cancel := context.WithCancel(context.Background())
	// Sockets and netlink handles opened on this thread belong to the
	// namespace; the listeners' goroutines serve them from anywhere.
	if err := w.ns.Do(func() error { return d.start(ctx) }); err != nil {
		cancel()
		w.t.Fatalf("starting the daemon: %v\n%s", err, w.log.String())
	}
	w.t.Cleanup(func() {
		d.stopAll()
		cancel()
		d.close()
	})
	return d
}

// reload reloads d from the policy file, in the namespace, as SIGHUP does.
func (w *world) reload(d *Daemon) {
	w.t.Helper()
	if err := w.ns.Do(func() error { d.reload(context.Background(), "test", true); return nil }); err != nil {
		w.t.Fatal(err)
	}
}

var counters = regexp.MustCompile(`counter packets \d+ bytes \d+`)

// ruleset is the daemon's table as the kernel has it, without set
// elements and counters: what a policy programs, not what traffic did.
func (w *world) ruleset(table string) string {
	w.t.Helper()
	out, err := w.ns.Exec("nft", "-t", "list", "table", "inet", table)
	if err != nil {
		w.t.Fatalf("listing table %s: %v\n%s", table, err, out)
	}
	return counters.ReplaceAllString(out, "counter")
}

// query asks server (in the namespace) for name's A record.
func (w *world) query(network, server, name string) (*dns.Msg, error) {
	conn, err := w.ns.Dial(network, "", server, wait)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	cl := &dns.Client{Net: network, Timeout: wait}
	r, _, err := cl.ExchangeWithConn(new(dns.Msg).SetQuestion(dns.Fqdn(name), dns.TypeA), &dns.Conn{Conn: conn})
	return r, err
}

// resolves checks that server answers name with want over UDP and TCP
// (want invalid: NXDOMAIN).
func (w *world) resolves(server, name string, want netip.Addr) {
	w.t.Helper()
	for _, network := range []string{"udp", "tcp"} {
		r, err := w.query(network, server, name)
		if err != nil {
			w.t.Errorf("%s over %s at %s: %v", name, network, server, err)
			continue
		}
		var got []string
		for _, rr := range r.Answer {
			if a, ok := rr.(*dns.A); ok {
				got = append(got, a.A.String())
			}
		}
		switch {
		case !want.IsValid() && r.Rcode != dns.RcodeNameError:
			w.t.Errorf("%s over %s at %s: got %s %v, want NXDOMAIN", name, network, server, dns.RcodeToString[r.Rcode], got)
		case want.IsValid() && (len(got) != 1 || got[0] != want.String()):
			w.t.Errorf("%s over %s at %s: got %s %v, want %s", name, network, server, dns.RcodeToString[r.Rcode], got, want)
		}
	}
}

// get fetches path from the admin listener at addr.
func (w *world) get(addr, path string) (string, error) {
	c := &http.Client{Timeout: wait, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
			return w.ns.DialWith(&net.Dialer{Timeout: wait}, network, a)
		},
		DisableKeepAlives: true,
	}}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// metric reads one series from the real /metrics endpoint at admin; -1
// when absent.
func (w *world) metric(admin, series string) float64 {
	w.t.Helper()
	body, err := w.get(admin, "/metrics")
	if err != nil {
		w.t.Fatalf("scraping %s/metrics: %v", admin, err)
	}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			var v float64
			if _, err := fmt.Sscan(rest, &v); err == nil {
				return v
			}
		}
	}
	return -1
}

// proxyAnswers checks that the proxy at addr answers a CONNECT with a
// status, a 403 for a name the policy in force does not allow.
func (w *world) proxyAnswers(addr, name string) {
	w.t.Helper()
	conn, err := w.ns.Dial("tcp", "", addr, wait)
	if err != nil {
		w.t.Errorf("proxy at %s: %v", addr, err)
		return
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(wait))
	fmt.Fprintf(conn, "CONNECT %s:443 HTTP/1.1\r\nHost: %s:443\r\n\r\n", name, name)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		w.t.Errorf("proxy at %s: %v", addr, err)
		return
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		w.t.Errorf("proxy at %s, CONNECT %s: got %s, want 403", addr, name, resp.Status)
	}
}

// free checks that nothing listens on a's addresses any more: each binds.
func (w *world) free(a addrs) {
	w.t.Helper()
	err := w.ns.Do(func() error {
		var errs []error
		for _, spec := range [][2]string{{"udp", a.dns}, {"tcp", a.dns}, {"tcp", a.proxy}, {"tcp", a.admin}} {
			var c io.Closer
			var err error
			if spec[0] == "udp" {
				c, err = net.ListenPacket("udp", spec[1])
			} else {
				c, err = net.Listen("tcp", spec[1])
			}
			if err != nil {
				errs = append(errs, err)
				continue
			}
			c.Close()
		}
		return errors.Join(errs...)
	})
	if err != nil {
		w.t.Errorf("the failed reload left sockets open: %v", err)
	}
}

// auditLines returns the decision lines of the audit file at path, after
// flushing d's buffer.
func auditLines(t *testing.T, d *Daemon, path string) []map[string]any {
	t.Helper()
	if err := d.out.Flush(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var out []map[string]any
	for _, l := range bytes.Split(bytes.TrimSpace(data), []byte("\n")) {
		var m map[string]any
		if json.Unmarshal(l, &m) == nil && m["msg"] == "decision" {
			out = append(out, m)
		}
	}
	return out
}

// hasLine reports whether lines hold a DNS decision for name.
func hasLine(lines []map[string]any, name string) bool {
	for _, l := range lines {
		if l["name"] == name {
			return true
		}
	}
	return false
}

var (
	old1 = netip.MustParseAddr("192.0.2.10")
	new2 = netip.MustParseAddr("192.0.2.20")
	none netip.Addr
)

// stillOld checks that everything of v1 is in force after a failed
// reload to v2: policy, listeners, resolver, kernel ruleset, audit file,
// and that the failure was counted and the new sockets closed.
func (w *world) stillOld(d *Daemon, started float64) {
	w.t.Helper()
	if got := d.Policy().Rules[0].Name; got != "old" {
		w.t.Errorf("policy in force has rule %q, want old", got)
	}
	if after := w.ruleset(w.v1.table); after != w.before {
		w.t.Errorf("a failed reload changed the kernel's table:\nbefore:\n%s\nafter:\n%s", w.before, after)
	}
	asked := w.up1.QueryCount()
	// The old DNS listener answers, with the old policy, through the old
	// resolver; DNS to any resolver is still redirected to it.
	w.resolves(w.v1.listen.dns, "old.example", old1)
	w.resolves(w.v1.listen.dns, "new.example", none)
	w.resolves(outsideDNS, "old.example", old1)
	if w.up1.QueryCount() == asked {
		w.t.Error("the old upstream was not asked: the resolver changed")
	}
	if n := w.up2.QueryCount(); n != 0 {
		w.t.Errorf("the new upstream was asked %d queries; the new resolver must not be in force", n)
	}
	w.proxyAnswers(w.v1.listen.proxy, "new.example")
	// The old audit file gets the decisions; the new one none.
	if lines := auditLines(w.t, d, w.v1.logFile); !hasLine(lines, "new.example") {
		w.t.Errorf("the old audit file has no line for the query after the failed reload: %v", lines)
	}
	if lines := auditLines(w.t, d, w.v2.logFile); len(lines) > 0 {
		w.t.Errorf("the new audit file has %d lines after a failed reload", len(lines))
	}
	w.free(w.v2.listen)
	admin := w.v1.listen.admin
	for series, want := range map[string]float64{
		`fqdngate_policy_reloads_total{result="failure"}`:       1,
		`fqdngate_policy_reloads_total{result="success"}`:       0,
		`fqdngate_policy_reload_duration_seconds_count`:         1, // refusals too
		`fqdngate_config_last_reload_successful`:                0,
		`fqdngate_config_last_reload_success_timestamp_seconds`: started,
		`fqdngate_policy_generation`:                            1,
		`fqdngate_config_restart_pending`:                       0,
	} {
		if got := w.metric(admin, series); got != want {
			w.t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	if !strings.Contains(w.log.String(), "the previous policy stays in force") {
		w.t.Errorf("the failed reload was not logged:\n%s", w.log.String())
	}
}

type syncBuffer = syncbuf.Buffer

// startV1 starts a daemon on v1 and checks that it serves it; it returns
// the time of the policy's load as the metric says.
func startV1(t *testing.T) (*world, *Daemon, float64) {
	t.Helper()
	w := newWorld(t)
	d := w.start(w.v1)
	w.before = w.ruleset(w.v1.table)
	if !strings.Contains(w.before, "redirect to :5301") {
		t.Fatalf("v1's table does not redirect DNS to its listener:\n%s", w.before)
	}
	w.resolves(outsideDNS, "old.example", old1)
	started := w.metric(addrsV1.admin, "fqdngate_config_last_reload_success_timestamp_seconds")
	if now := float64(time.Now().Unix()); started < now-60 || started > now+1 {
		t.Fatalf("fqdngate_config_last_reload_success_timestamp_seconds = %v at start, want about %v", started, now)
	}
	if got := w.metric(addrsV1.admin, "fqdngate_config_last_reload_successful"); got != 1 {
		t.Fatalf("fqdngate_config_last_reload_successful = %v at start, want 1", got)
	}
	return w, d, started
}

// TestReloadBindFailure: a listener that cannot be bound (another socket
// holds the new proxy port) fails the reload before the kernel is
// touched; the admin and DNS sockets bound before it are closed again.
func TestReloadBindFailure(t *testing.T) {
	w, d, started := startV1(t)
	held := w.ns.Listen("tcp", addrsV2.proxy)
	w.write(w.v2)
	w.reload(d)
	held.Close()
	w.stillOld(d, started)
	if !strings.Contains(w.log.String(), "starting proxy listener on "+addrsV2.proxy) {
		t.Errorf("the log does not name the listener that failed:\n%s", w.log.String())
	}
}

// TestReloadStateFileFailure: a state file whose directory does not exist
// fails the reload in prepare, as it fails a start; nothing changes.
func TestReloadStateFileFailure(t *testing.T) {
	w, d, started := startV1(t)
	w.v2.stateFile = filepath.Join(w.dir, "missing", "state.json")
	w.write(w.v2)
	w.reload(d)
	w.stillOld(d, started)
	if got := d.comps.nft.StateFile(); got != w.v1.stateFile {
		t.Errorf("the backend writes its state to %s after a failed reload, want %s", got, w.v1.stateFile)
	}
	if !strings.Contains(w.log.String(), "firewall.state_file") {
		t.Errorf("the log does not name firewall.state_file:\n%s", w.log.String())
	}
}

// TestReloadNftablesFailure: the kernel rejects the new ruleset after
// every new socket is bound; the kernel keeps the old rules (the
// transaction is aborted whole) and every new socket is closed.
func TestReloadNftablesFailure(t *testing.T) {
	w, d, started := startV1(t)
	d.comps.nft.FailNextApply()
	w.write(w.v2)
	w.reload(d)
	w.stillOld(d, started)
	if !strings.Contains(w.log.String(), "programming nftables") {
		t.Errorf("the log does not say the kernel refused:\n%s", w.log.String())
	}
}

// TestReloadResolverFailure: the new resolver cannot be built (no policy
// that loads makes resolver.New fail, so the test makes it).
func TestReloadResolverFailure(t *testing.T) {
	w, d, started := startV1(t)
	d.comps.ups.build = func(resolver.Config) (*resolver.Resolver, error) {
		return nil, errors.New("resolver refused by the test")
	}
	w.write(w.v2)
	w.reload(d)
	w.stillOld(d, started)
	if !strings.Contains(w.log.String(), "resolver refused by the test") {
		t.Errorf("the log does not give the resolver's error:\n%s", w.log.String())
	}
}

// TestReloadAuditFileFailure: the new audit file cannot be opened (its
// directory is a file).
func TestReloadAuditFileFailure(t *testing.T) {
	w, d, started := startV1(t)
	notDir := filepath.Join(w.dir, "not-a-directory")
	if err := os.WriteFile(notDir, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	v2 := w.v2
	v2.logFile = filepath.Join(notDir, "audit.log")
	w.write(v2)
	w.reload(d)
	w.stillOld(d, started)
	if !strings.Contains(w.log.String(), "opening audit log "+v2.logFile) {
		t.Errorf("the log does not name the audit file:\n%s", w.log.String())
	}
}

// TestReloadSwitchesEverything: a reload that succeeds puts every part of
// the new policy in force at once, and reports the settings that wait for
// a restart.
func TestReloadSwitchesEverything(t *testing.T) {
	w, d, started := startV1(t)
	w.write(w.v2)
	w.reload(d)

	if got := d.Policy().Rules[0].Name; got != "new" {
		t.Errorf("policy in force has rule %q, want new", got)
	}
	after := w.ruleset(w.v2.table)
	if !strings.Contains(after, "redirect to :5302") || !strings.Contains(after, "learn4.new") || strings.Contains(after, "learn4.old") {
		t.Errorf("the kernel's table does not follow v2:\n%s", after)
	}
	w.resolves(w.v2.listen.dns, "new.example", new2)
	w.resolves(w.v2.listen.dns, "old.example", none)
	w.resolves(outsideDNS, "new.example", new2)
	if w.up2.QueryCount() == 0 {
		t.Error("the new upstream was never asked: the resolver did not change")
	}
	asked := w.up1.QueryCount()
	w.proxyAnswers(w.v2.listen.proxy, "old.example")
	// Every old socket is closed.
	w.free(w.v1.listen)
	if n := w.up1.QueryCount(); n != asked {
		t.Errorf("the old upstream was asked %d more queries after the reload", n-asked)
	}
	// The new audit file gets the decisions, still as JSON: log.format
	// takes effect at the next restart.
	if lines := auditLines(t, d, w.v2.logFile); !hasLine(lines, "new.example") {
		t.Errorf("the new audit file has no JSON line for new.example: %v", lines)
	}
	admin := w.v2.listen.admin
	for series, want := range map[string]float64{
		`fqdngate_policy_reloads_total{result="failure"}`: 0,
		`fqdngate_policy_reloads_total{result="success"}`: 1,
		`fqdngate_policy_reload_duration_seconds_count`:   1,
		`fqdngate_config_last_reload_successful`:          1,
		`fqdngate_policy_generation`:                      2,
		`fqdngate_config_restart_pending`:                 2,
	} {
		if got := w.metric(admin, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	if got := w.metric(admin, `fqdngate_config_last_reload_success_timestamp_seconds`); got <= started {
		t.Errorf("fqdngate_config_last_reload_success_timestamp_seconds = %v after the reload, want later than %v", got, started)
	}

	// firewall.state_file is applied: the learned addresses go to the
	// new file at the next save.
	if got := d.comps.nft.StateFile(); got != w.v2.stateFile {
		t.Errorf("the backend writes its state to %s, want %s", got, w.v2.stateFile)
	}
	for deadline := time.Now().Add(wait); ; time.Sleep(50 * time.Millisecond) {
		if data, err := os.ReadFile(w.v2.stateFile); err == nil && strings.Contains(string(data), `"rule":"new"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("%s holds no address learned for rule new %v after the reload", w.v2.stateFile, wait)
			break
		}
	}

	// The restart-only settings: logged, and listed in /v1/policy.
	for _, want := range []string{
		`key=dns.cache_size in_force=1000 policy=2000`,
		`key=log.format in_force=json policy=text`,
		`restart_pending="dns.cache_size, log.format"`,
	} {
		if !strings.Contains(w.log.String(), want) {
			t.Errorf("the log has no %q:\n%s", want, w.log.String())
		}
	}
	body, err := w.get(admin, "/v1/policy")
	if err != nil {
		t.Fatal(err)
	}
	var summary struct {
		RestartPending []struct {
			Key     string `json:"key"`
			InForce string `json:"in_force"`
			Policy  string `json:"policy"`
		} `json:"restart_pending"`
	}
	if err := json.Unmarshal([]byte(body), &summary); err != nil {
		t.Fatalf("/v1/policy: %v\n%s", err, body)
	}
	if got, want := fmt.Sprint(summary.RestartPending), "[{dns.cache_size 1000 2000} {log.format json text}]"; got != want {
		t.Errorf("/v1/policy restart_pending: got %s, want %s", got, want)
	}

	// A policy that asks for the values in force again clears them.
	back := w.v2
	back.cacheSize, back.logFormat = w.v1.cacheSize, w.v1.logFormat
	w.write(back)
	w.reload(d)
	if got := w.metric(admin, `fqdngate_config_restart_pending`); got != 0 {
		t.Errorf("fqdngate_config_restart_pending = %v with the start's values back, want 0", got)
	}
}

// TestReloadForwardZones: a reload that adds, moves or removes a forward
// zone (dns.forward) puts the zone's new servers in force with the
// policy; the upstreams never hear of the zone's names.
func TestReloadForwardZones(t *testing.T) {
	w, d, _ := startV1(t)
	zone1 := dnstest.NewServer(t, dnstest.Zone(dnstest.A("dc.corp.example.", 300, "192.0.2.31")))
	zone2 := dnstest.NewServer(t, dnstest.Zone(dnstest.A("dc.corp.example.", 300, "192.0.2.32")))
	upAsked := w.up1.QueryCount()

	v := w.v1
	v.forward = zone1.Addr
	w.write(v)
	w.reload(d)
	w.resolves(outsideDNS, "dc.corp.example", netip.MustParseAddr("192.0.2.31"))

	v.forward = zone2.Addr
	w.write(v)
	w.reload(d)
	asked1 := zone1.QueryCount()
	w.resolves(outsideDNS, "dc.corp.example", netip.MustParseAddr("192.0.2.32"))
	if n := zone1.QueryCount(); n != asked1 {
		t.Errorf("the zone's old server was asked %d queries after the reload that moved it", n-asked1)
	}

	v.forward = netip.AddrPort{}
	w.write(v)
	w.reload(d)
	w.resolves(outsideDNS, "dc.corp.example", none)
	if n := w.up1.QueryCount(); n != upAsked {
		t.Errorf("the upstream was asked %d queries for the zone's names", n-upAsked)
	}
	if got := w.metric(w.v1.listen.admin, `fqdngate_policy_reloads_total{result="success"}`); got != 3 {
		t.Errorf("successful reloads: %v, want 3\n%s", got, w.log.String())
	}
}

// TestReloadFreesOldPolicy: the collection at the end of a reload frees
// the policy it replaced, rules and index, so that the process does not
// hold two policies until some later collection (a 100,000-rule policy
// is 50 MB). Nothing may keep a pointer to it once it is out of force;
// the DNS refresher's did until its next tick.
func TestReloadFreesOldPolicy(t *testing.T) {
	w, d, _ := startV1(t)
	freed := make(chan struct{})
	runtime.AddCleanup(d.Policy(), func(c chan struct{}) { close(c) }, freed)
	w.write(w.v1)
	w.reload(d)
	select {
	case <-freed:
	case <-time.After(300 * time.Millisecond): // under the refresher's tick
		t.Fatal("the policy a reload replaced is still reachable after the reload's collection")
	}
}
