package admin

import (
	"encoding/json"
	"errors"
	"io"
	"iter"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fqdngate/fqdngate/internal/dnsname"
	"github.com/fqdngate/fqdngate/internal/learn"
	"github.com/fqdngate/fqdngate/internal/netaddr"
	"github.com/fqdngate/fqdngate/internal/policy"
)

const testPolicy = `listen: {dns: "", proxy: "", admin: ""}
sources:
  payments: [10.1.0.0/24]
  others: [10.9.0.0/24]
rules:
  - name: bank-api
    from: [payments]
    to: [api.bank.example, "*.edge.bank.example"]
    ports: [443, "8000-8100/udp"]
    refresh: 30s
  - name: partner-db
    to: [203.0.113.0/24]
    ports: [5432]
`

func newServer(t *testing.T, ready func() error) *httptest.Server {
	t.Helper()
	p, err := policy.Parse("test.yaml", []byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "fqdngate_test_total", Help: "test"})
	c.Add(3)
	reg.MustRegister(c)
	srv := httptest.NewServer(Handler(Config{
		Policy:     func() *policy.Policy { return p },
		Generation: func() uint64 { return 7 },
		Ready:      ready,
		Gatherer:   reg,
		Local:      netaddr.HostList{netip.MustParseAddr("192.0.2.129")},
		Learned: func(dnsname.Name) iter.Seq[learn.Entry] {
			return slices.Values([]learn.Entry{{Name: "api.bank.example", Rule: "bank-api", Group: "payments", Addr: netip.MustParseAddr("192.0.2.10"), Expires: time.Now().Add(90 * time.Second)}})
		},
	}))
	t.Cleanup(srv.Close)
	return srv
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestEndpoints(t *testing.T) {
	srv := newServer(t, nil)
	cases := []struct {
		path     string
		code     int
		contains []string
	}{
		{"/healthz", 200, []string{"ok"}},
		{"/readyz", 200, []string{"ready"}},
		{"/metrics", 200, []string{"fqdngate_test_total 3"}},
		{"/v1/policy", 200, []string{`"generation": 7`, `"name": "bank-api"`, `"8000-8100/udp"`, `"refresh": "30s"`, `"203.0.113.0/24"`}},
		{"/v1/explain?from=10.1.0.7&to=x.edge.bank.example:443", 200, []string{`"action": "allow"`, `"rule": "bank-api"`, `"pattern": "*.edge.bank.example"`, `"group": "payments"`}},
		{"/v1/explain?from=10.9.0.7&to=api.bank.example", 200, []string{`"action": "deny"`, `"rule": ""`, `"near_rule": "bank-api"`}},
		{"/v1/explain?from=10.9.0.7&to=203.0.113.5:5432", 200, []string{`"action": "allow"`, `"rule": "partner-db"`, `"served": true`, `"inspect_tunnels": true`}},
		{"/v1/explain?from=203.0.113.9&to=203.0.113.5:5432", 200, []string{`"action": "deny"`, `"served": false`, `"reason": "not served: 203.0.113.9 is outside the inside (inside: source groups others, payments)"`}},
		{"/v1/explain?from=192.0.2.129&to=203.0.113.5:5432", 200, []string{`"action": "allow"`, `"served": true`}},
		{"/v1/explain?from=10.9.0.7", 400, []string{"give from"}},
		{"/v1/explain?from=10.9.0.7&pod=a/b&to=a.example", 400, []string{"give from (an IP) or pod"}},
		{"/v1/explain?pod=payments/c1&to=a.example", 400, []string{"no source group selects pods"}},
		{"/v1/explain?from=nonsense&to=a.example", 400, []string{"not an IP"}},
		{"/v1/learned", 200, []string{`"name": "api.bank.example"`, `"address": "192.0.2.10"`, `"group": "payments"`, `"expires_in": "1m30s"`}},
		{"/nope", 404, nil},
	}
	for _, c := range cases {
		code, body := get(t, srv.URL+c.path)
		if code != c.code {
			t.Errorf("GET %s: got status %d, want %d (%s)", c.path, code, c.code, body)
		}
		for _, w := range c.contains {
			if !strings.Contains(body, w) {
				t.Errorf("GET %s: body lacks %s:\n%s", c.path, w, body)
			}
		}
	}
}

func TestNotReady(t *testing.T) {
	srv := newServer(t, func() error { return errors.New("listeners not serving: dns") })
	code, body := get(t, srv.URL+"/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "dns") {
		t.Errorf("got %d %q, want 503 naming the listener", code, body)
	}
}

func TestPolicySummaryIsJSON(t *testing.T) {
	srv := newServer(t, nil)
	_, body := get(t, srv.URL+"/v1/policy")
	var s Summary
	if err := json.Unmarshal([]byte(body), &s); err != nil {
		t.Fatal(err)
	}
	if len(s.Rules) != 2 || s.Rules[0].From[0] != "payments" || len(s.Rules[1].From) != 0 {
		t.Errorf("got rules %+v", s.Rules)
	}
}

// TestPolicySummary: /v1/policy shows who is served (the inside, and
// whether the policy names it or it is the source groups), the source
// groups' interfaces, the kernel's settings, the DNS settings that decide
// answers, and each rule's tunnel inspection.
func TestPolicySummary(t *testing.T) {
	tests := []struct {
		name, policy string
		want         []string // pieces of the indented JSON
	}{
		{"source groups, one tied", `listen: {dns: "0.0.0.0:53", proxy: "", admin: ""}
dns: {upstreams: [192.0.2.53], wildcard_budget: 50, inspect_cname: false}
firewall: {backend: nftables, hook: forward, reverse_path: loose, deny_with: reject, log_allowed: sampled, state_file: ""}
sources:
  payments: {cidrs: [10.1.0.0/24, "2001:db8:1::/64"], interfaces: [eth1]}
  office: [10.2.0.0/16]
rules:
  - name: db
    from: [office]
    to: [203.0.113.0/24]
    ports: [5432]
    inspect_tunnels: false
  - name: web
    from: [payments]
    to: ["*.bank.example"]
`, []string{
			`"source_interfaces": {
    "payments": [
      "eth1"
    ]
  }`,
			`"inside": {
    "explicit": false,
    "description": "source groups office, payments (on eth1)",
    "parts": [
      {
        "ranges": [
          "10.2.0.0/16"
        ],
        "interfaces": []
      },
      {
        "group": "payments",
        "ranges": [
          "10.1.0.0/24",
          "2001:db8:1::/64"
        ],
        "interfaces": [
          "eth1"
        ]
      }
    ]
  }`,
			`"firewall": {
    "backend": "nftables",
    "hook": "forward",
    "table": "fqdngate",
    "reverse_path": "loose",
    "deny_with": "reject",
    "log_allowed": "sampled",
    "transparent_ports": []
  }`,
			`"dns": {
    "deny_with": "nxdomain",
    "inspect_cname": false,
    "wildcard_budget": 50,
    "rebinding_protection": true,
    "strip_ech": true
  }`,
			`"name": "db",`, `"inspect_tunnels": false`,
			`"name": "web",`, `"inspect_tunnels": true`,
		}},
		{"an explicit inside, defaults", `listen: {dns: "0.0.0.0:53", proxy: "", admin: ""}
dns: {upstreams: [192.0.2.53]}
firewall: {backend: nftables, hook: forward, state_file: ""}
inside: {ranges: [10.0.0.0/8], interfaces: [eth1, eth2]}
rules:
  - name: web
    to: [www.example.com]
`, []string{
			`"source_interfaces": {}`,
			`"inside": {
    "explicit": true,
    "description": "inside.ranges 10.0.0.0/8 arriving on inside.interfaces eth1, eth2",
    "parts": [
      {
        "ranges": [
          "10.0.0.0/8"
        ],
        "interfaces": [
          "eth1",
          "eth2"
        ]
      }
    ]
  }`,
			`"reverse_path": "strict"`, `"deny_with": "drop"`, `"log_allowed": "off"`,
			`"inspect_cname": true`, `"wildcard_budget": 300`, `"inspect_tunnels": true`,
		}},
		{"no inside", testPolicy[:strings.Index(testPolicy, "sources:")] + "rules: [{name: a, to: a.example}]\n", []string{
			`"inside": {
    "explicit": false,
    "description": "none: the policy has no source groups and no inside key",
    "parts": []
  }`,
			`"sources": {}`, `"reverse_path": "off"`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := policy.Parse("test.yaml", []byte(tt.policy))
			if err != nil {
				t.Fatal(err)
			}
			srv := httptest.NewServer(Handler(Config{Policy: func() *policy.Policy { return p }}))
			defer srv.Close()
			_, body := get(t, srv.URL+"/v1/policy")
			for _, w := range tt.want {
				if !strings.Contains(body, w) {
					t.Errorf("/v1/policy lacks\n%s\nin\n%s", w, body)
				}
			}
		})
	}
}

// TestPolicyRestartPending: /v1/policy lists the settings waiting for a
// restart, and an empty list (not null) when there are none.
func TestPolicyRestartPending(t *testing.T) {
	p, err := policy.Parse("test.yaml", []byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		pending func() []Pending
		want    string
	}{
		{nil, `"restart_pending": []`},
		{func() []Pending { return nil }, `"restart_pending": []`},
		{func() []Pending {
			return []Pending{{Key: "dns.cache_size", InForce: "100000", Policy: "5"}}
		}, `"restart_pending": [
    {
      "key": "dns.cache_size",
      "in_force": "100000",
      "policy": "5"
    }
  ]`},
	} {
		srv := httptest.NewServer(Handler(Config{Policy: func() *policy.Policy { return p }, RestartPending: tt.pending}))
		_, body := get(t, srv.URL+"/v1/policy")
		srv.Close()
		if !strings.Contains(body, tt.want) {
			t.Errorf("/v1/policy: got\n%s\nwant it to contain\n%s", body, tt.want)
		}
	}
}

// TestExplainPod: /v1/explain?pod= resolves the pod through the daemon's
// pod snapshot; a pod it does not follow is a 404 that says so, and until
// the pods are listed a 503.
func TestExplainPod(t *testing.T) {
	p, err := policy.Parse("p.yaml", []byte(`listen: {dns: "", proxy: "", admin: ""}
dns: {upstreams: [192.0.2.53]}
kubernetes: {node: n1, cluster_cidrs: [10.244.0.0/16, "fd00:244::/48"], dns: {address: 10.244.0.10}}
sources:
  checkout: {kubernetes: {namespaces: [payments]}}
rules: [{name: bank, from: [checkout], to: [api.bank.example, 2001:db8::/32]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(Handler(Config{Policy: func() *policy.Policy { return p }}))
	t.Cleanup(srv.Close)
	if code, body := get(t, srv.URL+"/v1/explain?pod=payments/c1&to=api.bank.example"); code != http.StatusServiceUnavailable || !strings.Contains(body, "not listed yet") {
		t.Errorf("before the pods are listed: got %d %s, want 503 not listed yet", code, body)
	}
	pods := []policy.Pod{
		{Namespace: "payments", Name: "c1", Addrs: []netip.Addr{netip.MustParseAddr("fd00:244::5"), netip.MustParseAddr("10.244.1.5")}},
		{Namespace: "shop", Name: "c1", Addrs: []netip.Addr{netip.MustParseAddr("10.244.1.6")}},
	}
	if err := p.SetMembers(p.NewMembers(pods, true)); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		query    string
		code     int
		contains []string
	}{
		{"pod=payments/c1&to=api.bank.example", 200, []string{`"pod": "payments/c1"`, `"from": "10.244.1.5"`, `"action": "allow"`, `"group": "checkout"`}},
		{"pod=payments/c1&to=[2001:db8::7]:443", 200, []string{`"pod": "payments/c1"`, `"from": "fd00:244::5"`, `"action": "allow"`}},
		{"pod=shop/c1&to=api.bank.example", 200, []string{`"pod": "shop/c1"`, `"from": "10.244.1.6"`, `"action": "deny"`}},
		{"pod=payments/c2&to=api.bank.example", 404, []string{"unknown pod payments/c2", "another node"}},
		{"pod=c1&to=api.bank.example", 400, []string{"NAMESPACE/NAME"}},
		{"pod=payments/c1&to=bad..name", 400, []string{"destination"}},
	}
	for _, c := range cases {
		code, body := get(t, srv.URL+"/v1/explain?"+c.query)
		if code != c.code {
			t.Errorf("GET %s: got status %d, want %d (%s)", c.query, code, c.code, body)
		}
		for _, w := range c.contains {
			if !strings.Contains(body, w) {
				t.Errorf("GET %s: body lacks %s:\n%s", c.query, w, body)
			}
		}
	}
}
