package main

import (
	"encoding/json"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/fqdngate/fqdngate/internal/admin"
	"github.com/fqdngate/fqdngate/internal/policy"
)

// TestExplainFromPod: explain --from-pod asks the daemon's real admin
// endpoint, which resolves the pod through the pods it follows; an
// unknown pod, a daemon that follows none and a daemon that is not there
// are clear errors.
func TestExplainFromPod(t *testing.T) {
	p, err := policy.Parse("p.yaml", []byte(`listen: {dns: "", proxy: "", admin: ""}
dns: {upstreams: [192.0.2.53]}
kubernetes: {node: n1, cluster_cidrs: [10.244.0.0/16], dns: {address: 10.244.0.10}}
sources:
  checkout: {kubernetes: {namespaces: [payments], pod_selector: {matchLabels: {app: checkout}}}}
rules: [{name: bank, from: [checkout], to: [api.bank.example]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	pods := []policy.Pod{
		{Namespace: "payments", Name: "checkout-7d9f", Labels: map[string]string{"app": "checkout"}, Addrs: []netip.Addr{netip.MustParseAddr("10.244.1.5")}},
		{Namespace: "payments", Name: "batch-1", Labels: map[string]string{"app": "batch"}, Addrs: []netip.Addr{netip.MustParseAddr("10.244.1.6")}},
	}
	if err := p.SetMembers(p.NewMembers(pods, true)); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(admin.Handler(admin.Config{Policy: func() *policy.Policy { return p }}))
	t.Cleanup(srv.Close)
	noPods, err := policy.Parse("q.yaml", []byte(`listen: {dns: "", proxy: "", admin: ""}
sources: {office: [10.1.0.0/24]}
rules: [{name: bank, from: [office], to: [api.bank.example]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	plain := httptest.NewServer(admin.Handler(admin.Config{Policy: func() *policy.Policy { return noPods }}))
	t.Cleanup(plain.Close)
	gone := httptest.NewServer(nil)
	gone.Close()

	cases := []struct {
		name    string
		args    []string
		code    int
		stdout  []string
		stderr  string
		jsonPod string
	}{
		{"allowed", []string{"--admin", srv.URL, "--from-pod", "payments/checkout-7d9f", "--to", "api.bank.example:443"}, 0,
			[]string{"ALLOW: 10.244.1.5 -> api.bank.example port 443/tcp", "pod:     payments/checkout-7d9f", "source groups: checkout", "rule:    bank"}, "", ""},
		{"denied", []string{"--admin", srv.URL + "/", "--from-pod", "payments/batch-1", "--to", "api.bank.example"}, 1,
			[]string{"DENY: 10.244.1.6 -> api.bank.example", "pod:     payments/batch-1", "source groups: none"}, "", ""},
		{"json", []string{"--admin", srv.URL, "--from-pod", "payments/checkout-7d9f", "--to", "api.bank.example", "--json"}, 0,
			nil, "", "payments/checkout-7d9f"},
		{"unknown pod", []string{"--admin", srv.URL, "--from-pod", "payments/checkout-gone", "--to", "api.bank.example"}, 2,
			nil, "unknown pod payments/checkout-gone: this daemon follows no such pod", ""},
		{"not a pod name", []string{"--admin", srv.URL, "--from-pod", "checkout", "--to", "api.bank.example"}, 2,
			nil, "give it as NAMESPACE/NAME", ""},
		{"daemon follows no pods", []string{"--admin", plain.URL, "--from-pod", "payments/checkout-7d9f", "--to", "api.bank.example"}, 2,
			nil, "no source group selects pods", ""},
		{"no daemon", []string{"--admin", gone.URL, "--from-pod", "payments/checkout-7d9f", "--to", "api.bank.example"}, 1,
			nil, "is fqdngate running with its admin listener at " + gone.URL, ""},
		{"with -c", []string{"-c", "p.yaml", "--from-pod", "payments/checkout-7d9f", "--to", "api.bank.example"}, 2,
			nil, "--from-pod asks the daemon", ""},
		{"bad admin", []string{"--admin", "127.0.0.1:15380", "--from-pod", "payments/x", "--to", "api.bank.example"}, 2,
			nil, "is not a URL like http://127.0.0.1:15380", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, errOut, code := runCLI(t, append([]string{"explain"}, c.args...)...)
			if code != c.code {
				t.Errorf("got exit %d, want %d (stderr %q)", code, c.code, errOut)
			}
			for _, w := range c.stdout {
				if !strings.Contains(out, w) {
					t.Errorf("stdout lacks %q:\n%s", w, out)
				}
			}
			if !strings.Contains(errOut, c.stderr) {
				t.Errorf("stderr %q lacks %q", errOut, c.stderr)
			}
			if c.jsonPod != "" {
				var r struct{ Pod, Action, From string }
				if err := json.Unmarshal([]byte(out), &r); err != nil || r.Pod != c.jsonPod || r.Action != "allow" || r.From != "10.244.1.5" {
					t.Errorf("--json printed %q (%v), want pod %s allowed from 10.244.1.5", out, err, c.jsonPod)
				}
			}
		})
	}
}
