package policy

import (
	"errors"
	"strings"
	"testing"
	"time"
)

const (
	localName  = "local.yaml"
	sharedName = "shared revision 3"
)

// fleetLocal is a gateway's local file; fleetShared a shared revision.
const (
	fleetLocal = "cluster:\n  etcd: {endpoints: [\"http://127.0.0.1:2379\"]}\n  node: gw-a\n"
	// ruleLine is where the rule of fleetShared starts.
	fleetShared = "dns: {upstreams: [192.0.2.53]}\nrules:\n  - name: web\n    to: [example.com]\n"
)

// composeCase is a fleet gateway's two halves with one mistake: an error in
// file at line:col (0: the file as a whole) must contain every one of want.
type composeCase struct {
	name          string
	local, shared string
	file          string
	line, col     int
	want          []string
}

var composeCases = []composeCase{
	{"cluster empty", "cluster:\n", fleetShared, localName, 1, 1, []string{"cluster is empty", "endpoints"}},
	{"no endpoints", "cluster: {node: gw-a}\n", fleetShared, localName, 1, 1, []string{"cluster needs etcd.endpoints"}},
	{"empty endpoints", "cluster:\n  etcd: {endpoints: []}\n  node: gw-a\n", fleetShared, localName, 2, 21, []string{"cluster.etcd.endpoints is empty"}},
	{"plain http to another host", "cluster: {etcd: {endpoints: [\"http://192.0.2.11:2379\"]}, node: gw-a}\n", fleetShared, localName, 1, 30, []string{"plain http to another host", "https://", "client certificates"}},
	{"endpoint without port", "cluster: {etcd: {endpoints: [\"https://192.0.2.11\"]}, node: gw-a}\n", fleetShared, localName, 1, 30, []string{"has no port", "https://192.0.2.11:2379"}},
	{"endpoint not a URL", "cluster: {etcd: {endpoints: [\"192.0.2.11:2379\"]}, node: gw-a}\n", fleetShared, localName, 1, 30, []string{"is not an etcd client URL", "https://192.0.2.11:2379"}},
	{"endpoint with a path", "cluster: {etcd: {endpoints: [\"https://192.0.2.11:2379/v3\"]}, node: gw-a}\n", fleetShared, localName, 1, 30, []string{"scheme://host:port only"}},
	{"https without client certificate", "cluster: {etcd: {endpoints: [\"https://192.0.2.11:2379\"]}, node: gw-a}\n", fleetShared, localName, 1, 29, []string{"needs cert_file and key_file", "client certificates"}},
	{"mixed schemes", "cluster: {etcd: {endpoints: [\"http://127.0.0.1:2379\", \"https://192.0.2.11:2379\"]}, node: gw-a}\n", fleetShared, localName, 1, 29, []string{"mixes http:// and https://"}},
	{"cert without key", "cluster:\n  etcd:\n    endpoints: [\"https://192.0.2.11:2379\"]\n    tls: {cert_file: testdata/resolv.conf}\n  node: gw-a\n", fleetShared, localName, 4, 10, []string{"needs both cert_file and key_file"}},
	{"missing ca_file", "cluster:\n  etcd:\n    endpoints: [\"https://192.0.2.11:2379\"]\n    tls: {ca_file: /nonexistent/ca.pem, cert_file: testdata/resolv.conf, key_file: testdata/resolv.conf}\n  node: gw-a\n", fleetShared, localName, 4, 10, []string{"cluster.etcd.tls.ca_file", "/nonexistent/ca.pem"}},
	{"tls with http", "cluster:\n  etcd:\n    endpoints: [\"http://127.0.0.1:2379\"]\n    tls: {cert_file: testdata/resolv.conf, key_file: testdata/resolv.conf}\n  node: gw-a\n", fleetShared, localName, 4, 10, []string{"endpoints are http://", "https://"}},
	{"username without password_file", "cluster:\n  etcd:\n    endpoints: [\"http://127.0.0.1:2379\"]\n    username: fqdngate\n  node: gw-a\n", fleetShared, localName, 4, 15, []string{"needs both username and password_file"}},
	{"missing password_file", "cluster:\n  etcd:\n    endpoints: [\"http://127.0.0.1:2379\"]\n    username: fqdngate\n    password_file: /nonexistent/pw\n  node: gw-a\n", fleetShared, localName, 5, 20, []string{"cluster.etcd.password_file", "/nonexistent/pw"}},
	{"bad prefix", fleetLocal + "  prefix: fqdngate\n", fleetShared, localName, 4, 11, []string{`cluster.prefix "fqdngate" must start and end with '/'`, "/fqdngate/prod/"}},
	{"bad node", "cluster:\n  etcd: {endpoints: [\"http://127.0.0.1:2379\"]}\n  node: \"gw a\"\n", fleetShared, localName, 3, 9, []string{`cluster.node "gw a" must be 1 to 63 letters`}},
	{"bad hold", fleetLocal + "  hold: all\n", fleetShared, localName, 4, 9, []string{`cluster.hold must be peers`, `or local`, `not "all"`}},
	{"hold_timeout too long", fleetLocal + "  hold_timeout: 10s\n", fleetShared, localName, 4, 17, []string{"cluster.hold_timeout must be longer than 0s and at most 5s"}},
	{"hold_timeout zero", fleetLocal + "  hold_timeout: 0s\n", fleetShared, localName, 4, 17, []string{"cluster.hold_timeout must be longer than 0s"}},
	{"bad on_hold_timeout", fleetLocal + "  on_hold_timeout: never\n", fleetShared, localName, 4, 20, []string{"cluster.on_hold_timeout must be release", `or servfail, not "never"`}},
	{"history_keep too small", fleetLocal + "  history_keep: 1\n", fleetShared, localName, 4, 17, []string{"cluster.history_keep must be a whole number from 2 to 100000", `not "1"`}},
	{"history_keep not a number", fleetLocal + "  history_keep: all\n", fleetShared, localName, 4, 17, []string{"cluster.history_keep must be a whole number"}},
	{"unknown cluster key", fleetLocal + "  holds: peers\n", fleetShared, localName, 4, 3, []string{`unknown key "holds" in cluster`, `did you mean "hold"?`}},
	{"shared key in the local file", fleetLocal + "rules: []\n", fleetShared, localName, 4, 1, []string{"rules is shared by the fleet", "shared policy", "fqdngate policy push"}},
	{"local key in the shared policy", fleetLocal, "listen: {admin: \"127.0.0.1:0\"}\n" + fleetShared, sharedName, 1, 1, []string{"listen is set on each gateway", "local file"}},
	{"cluster in the shared policy", fleetLocal, fleetShared + "cluster: {}\n", sharedName, 5, 1, []string{"cluster is set on each gateway"}},
	{"admin in the shared policy", fleetLocal, fleetShared + "admin: {listen: \"127.0.0.1:0\"}\n", sharedName, 5, 1, []string{"admin is set on each gateway", "local file"}},
	{"error in the shared policy", fleetLocal, fleetShared + "    ports: [0]\n", sharedName, 5, 13, []string{`rule "web": port "0" is out of range`}},
	{"unknown key in the shared policy", fleetLocal, fleetShared + "rulez: []\n", sharedName, 5, 1, []string{`unknown key "rulez"`, `did you mean "rules"?`}},
	{"shared not YAML", fleetLocal, "rules: [\n", sharedName, -1, 0, []string{"not valid YAML"}},
	{"shared empty", fleetLocal, "", sharedName, 0, 0, []string{"the shared policy is empty"}},
	{"shared not a mapping", fleetLocal, "- rules\n", sharedName, 1, 1, []string{"the shared policy must be a mapping"}},
	{"local without cluster", "listen: {admin: \"127.0.0.1:0\"}\n", fleetShared, localName, 0, 0, []string{"no cluster section", "standalone policy"}},
}

func TestComposeErrors(t *testing.T) {
	for _, c := range composeCases {
		t.Run(c.name, func(t *testing.T) {
			p, err := Compose(Source{Name: localName, Data: []byte(c.local)}, &Source{Name: sharedName, Data: []byte(c.shared)})
			if err == nil {
				t.Fatalf("Compose: got a policy of %d rules, want an error", len(p.Rules))
			}
			var list ErrorList
			if !errors.As(err, &list) {
				t.Fatalf("Compose: got %v (%T), want an ErrorList", err, err)
			}
			for _, e := range list {
				if e.File != c.file || (c.line >= 0 && (e.Line != c.line || e.Col != c.col)) {
					continue
				}
				if containsAll(e.Msg, c.want) {
					return
				}
			}
			t.Errorf("got errors:\n%v\nwant one at %s:%d:%d containing %q", err, c.file, c.line, c.col, c.want)
		})
	}
}

func containsAll(s string, want []string) bool {
	for _, w := range want {
		if !strings.Contains(s, w) {
			return false
		}
	}
	return true
}

// TestComposeHalves checks that each half's settings come from where they
// belong, and the defaults of the cluster section.
func TestComposeHalves(t *testing.T) {
	old := hostname
	hostname = func() (string, error) { return "gw-host", nil }
	defer func() { hostname = old }()
	local := "listen: {dns: \"\", proxy: \"\", admin: \"127.0.0.1:9190\"}\nlog: {format: text}\ncluster:\n  etcd: {endpoints: [\"http://127.0.0.1:2379\", \"http://[::1]:2379\"]}\n"
	shared := "mode: audit\n" + fleetShared
	p, err := Compose(Source{Name: localName, Data: []byte(local)}, &Source{Name: sharedName, Data: []byte(shared)})
	if err != nil {
		t.Fatal(err)
	}
	c := p.Cluster
	if c == nil {
		t.Fatal("no Cluster")
	}
	want := Cluster{
		Endpoints: []string{"http://127.0.0.1:2379", "http://[::1]:2379"},
		Prefix:    "/fqdngate/", Node: "gw-host", Hold: HoldPeers, HoldTimeout: 250 * time.Millisecond, OnHoldTimeout: TimeoutRelease,
		At: Pos{3, 1},
	}
	if got := *c; got.Prefix != want.Prefix || got.Node != want.Node || got.Hold != want.Hold || got.HoldTimeout != want.HoldTimeout ||
		got.OnHoldTimeout != want.OnHoldTimeout || got.At != want.At || strings.Join(got.Endpoints, ",") != strings.Join(want.Endpoints, ",") {
		t.Errorf("got cluster %+v, want %+v", got, want)
	}
	if p.Listen.Admin != "127.0.0.1:9190" || p.Log.Format != "text" {
		t.Errorf("local settings: got listen %+v, log %+v", p.Listen, p.Log)
	}
	if p.Mode != Audit || len(p.Rules) != 1 || p.Rules[0].Name != "web" {
		t.Errorf("shared settings: got mode %v, %d rules", p.Mode, len(p.Rules))
	}
	if p.File != localName || p.SharedName != sharedName {
		t.Errorf("got File %q, SharedName %q; want %q, %q", p.File, p.SharedName, localName, sharedName)
	}
}

func TestComposeClusterSettings(t *testing.T) {
	local := "cluster:\n  etcd:\n    endpoints: [\"https://192.0.2.11:2379\", \"https://gw-etcd.example:2379\"]\n" +
		"    tls: {ca_file: testdata/resolv.conf, cert_file: testdata/resolv.conf, key_file: testdata/resolv.conf}\n" +
		"    username: fqdngate\n    password_file: testdata/resolv.conf\n" +
		"  prefix: /fqdngate/prod/\n  node: gw-b\n  hold: local\n  hold_timeout: 1s\n  on_hold_timeout: servfail\n  history_keep: 20\n"
	p, err := Compose(Source{Name: localName, Data: []byte(local)}, &Source{Name: sharedName, Data: []byte(fleetShared)})
	if err != nil {
		t.Fatal(err)
	}
	c := p.Cluster
	if c.CAFile == "" || c.CertFile == "" || c.KeyFile == "" || c.Username != "fqdngate" || c.PasswordFile == "" ||
		c.Prefix != "/fqdngate/prod/" || c.Node != "gw-b" || c.Hold != HoldLocal || c.HoldTimeout != time.Second || c.OnHoldTimeout != TimeoutServFail || c.HistoryKeep != 20 {
		t.Errorf("got %+v", *c)
	}
}

// TestComposeWithoutShared is a gateway before any shared revision: its
// local settings, and nothing allowed.
func TestComposeWithoutShared(t *testing.T) {
	p, err := Compose(Source{Name: localName, Data: []byte(fleetLocal + "listen: {dns: \"\", proxy: \"\"}\n")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Rules) != 0 || p.SharedName != "" || p.Cluster == nil {
		t.Errorf("got %d rules, shared %q, cluster %v; want none, none, set", len(p.Rules), p.SharedName, p.Cluster)
	}
	if d := p.Decide(Query{Name: "example.com", Port: 443}); d.Action != Deny {
		t.Errorf("got %v, want deny", d.Action)
	}
}

// TestComposeWithoutSharedNeedsNoResolver: a gateway waiting for its
// shared half resolves nothing, so it needs no resolv.conf (a gateway's
// often names the gateway itself).
func TestComposeWithoutSharedNeedsNoResolver(t *testing.T) {
	old := resolvConf
	resolvConf = "testdata/no-such-resolv.conf"
	defer func() { resolvConf = old }()
	p, err := Compose(Source{Name: localName, Data: []byte(fleetLocal + "listen: {dns: \"127.0.0.1:5353\"}\n")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.DNS.Upstreams) != 0 {
		t.Errorf("got upstreams %v, want none", p.DNS.Upstreams)
	}
	// With the shared half, the usual rule: no upstreams and no
	// resolv.conf is an error.
	if _, err := Compose(Source{Name: localName, Data: []byte(fleetLocal + "listen: {dns: \"127.0.0.1:5353\"}\n")}, &Source{Name: sharedName, Data: []byte("rules: []\n")}); err == nil || !strings.Contains(err.Error(), "dns.upstreams is not set") {
		t.Errorf("with a shared half and no resolv.conf: got %v", err)
	}
}

// TestComposeErrorOrder: every error of both halves in one run, the local
// file's first, each in position order.
func TestComposeErrorOrder(t *testing.T) {
	local := fleetLocal + "  hold: all\nlog: {format: xml}\n"
	shared := "mode: block\n" + fleetShared + "    ports: [0]\n"
	_, err := Compose(Source{Name: localName, Data: []byte(local)}, &Source{Name: sharedName, Data: []byte(shared)})
	var list ErrorList
	if !errors.As(err, &list) {
		t.Fatalf("got %v, want an ErrorList", err)
	}
	var got []string
	for _, e := range list {
		got = append(got, strings.SplitN(e.Error(), ": ", 2)[0])
	}
	want := []string{"local.yaml:4:9", "local.yaml:5:15", "shared revision 3:1:7", "shared revision 3:6:13"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("got errors at %v, want %v:\n%v", got, want, err)
	}
}

func TestParseRefusesCluster(t *testing.T) {
	_, err := Parse(localName, []byte(fleetLocal+fleetShared))
	if err == nil || !strings.Contains(err.Error(), "local.yaml:1:1: this file has a cluster section") {
		t.Errorf("got %v, want the cluster section refused at 1:1", err)
	}
}

func TestParseCluster(t *testing.T) {
	c, err := ParseCluster("standalone.yaml", []byte(fleetShared))
	if c != nil || err != nil {
		t.Errorf("standalone: got %v, %v; want nil, nil", c, err)
	}
	c, err = ParseCluster(localName, []byte(fleetLocal+"rules: []\n"))
	if err != nil || c == nil || c.Node != "gw-a" || len(c.Endpoints) != 1 || c.HistoryKeep != DefaultHistoryKeep {
		t.Errorf("got %+v, %v; want the cluster section with its defaults (a misplaced key is Compose's to report)", c, err)
	}
	_, err = ParseCluster(localName, []byte(fleetLocal+"  hold: all\n"))
	if err == nil || !strings.Contains(err.Error(), "local.yaml:4:9: cluster.hold") {
		t.Errorf("got %v, want the bad hold at 4:9", err)
	}
}

// FuzzCompose feeds Compose an arbitrary shared half, the part that comes
// from etcd: it must not panic, and must return either a policy or an
// ErrorList naming one of the two halves. Run it with:
//
//	go test -run '^$' -fuzz '^FuzzCompose$' -fuzztime 30s ./internal/policy/
func FuzzCompose(f *testing.F) {
	for _, c := range composeCases {
		f.Add([]byte(c.shared))
	}
	for _, c := range errorCases {
		f.Add([]byte(c.yaml))
	}
	local := Source{Name: localName, Data: []byte(fleetLocal)}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Compose(local, &Source{Name: sharedName, Data: data})
		if err == nil {
			if p == nil || p.Cluster == nil || p.SharedName != sharedName {
				t.Fatal("Compose returned no error and no fleet policy")
			}
			return
		}
		var list ErrorList
		if !errors.As(err, &list) || len(list) == 0 {
			t.Fatalf("Compose error %v (%T) is not a non-empty ErrorList", err, err)
		}
		for _, e := range list {
			if e.File != localName && e.File != sharedName {
				t.Errorf("error names %q: %v", e.File, e)
			}
			if e.Line == 0 && !fileLevel(e.Msg) && !strings.HasPrefix(e.Msg, "the shared policy is empty") {
				t.Errorf("error without a position: %v", e)
			}
		}
	})
}
