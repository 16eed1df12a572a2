package importer

import (
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

func TestTranslatePattern(t *testing.T) {
	tests := []struct {
		dialect Dialect
		in      string
		want    string // "" when it must not translate
		errHas  string
		off     int
	}{
		{Cilium, "api.example.com", "api.example.com", "", 0},
		{Cilium, "API.Example.COM.", "api.example.com", "", 0},
		{Cilium, "*.example.com", "*.example.com", "", 0},
		{Cilium, "**.example.com", "**.example.com", "", 0},
		{Calico, "*.example.com", "**.example.com", "", 0},
		{NPEP, "*.example.com", "**.example.com", "", 0},
		{NPEP, "bücher.example", "xn--bcher-kva.example", "", 0},
		{Calico, "**.example.com", "", "'*' inside a name", 0},
		{NPEP, "**.example.com", "", "'*' inside a name", 0},
		{Cilium, "*", "", "allows every name", 0},
		{Calico, "*", "", "allows every name", 0},
		{Cilium, "api-*.example.com", "", "'*' inside a name", 4},
		{Cilium, "*x.example.com", "", "'*' inside a name", 0},
		{Cilium, "*.*.example.com", "", "as a label other than the first", 2},
		{Calico, "www.*.example.com", "", "as a label other than the first", 4},
		{Cilium, "*.", "", "no name after the wildcard", 0},
		{Cilium, "a..b", "", "not a valid name pattern", 0},
		{Cilium, "https://x.example.com", "", "not a valid name pattern", 0},
		{Cilium, "*.com", "", "opens every tenant of com, a public suffix", 0},
		{Calico, "*.github.io", "", "a shared hosting suffix", 0},
		{NPEP, "*.co.uk", "", "a public suffix", 0},
		{Cilium, "github.io", "github.io", "", 0},
	}
	for _, tc := range tests {
		got, err := translatePattern(tc.dialect, tc.in)
		if tc.want != "" {
			if err != nil || got != tc.want {
				t.Errorf("%s %q: got %q, %v; want %q", tc.dialect, tc.in, got, err, tc.want)
			}
			continue
		}
		if err == nil {
			t.Errorf("%s %q: got %q, want an error containing %q", tc.dialect, tc.in, got, tc.errHas)
			continue
		}
		pe := err.(*patternError)
		if !strings.Contains(pe.msg, tc.errHas) || pe.off != tc.off {
			t.Errorf("%s %q: got error %q at %d, want %q at %d", tc.dialect, tc.in, pe.msg, pe.off, tc.errHas, tc.off)
		}
	}
}

// TestQuote checks that every scalar the output writes reads back, as a
// string, as what was meant.
func TestQuote(t *testing.T) {
	for _, s := range []string{"app", "true", "Yes", "off", "null", "~", "", "123", "1.5", "0x1f", "*.example.com", "**.x", "a: b", "#x", "- x", "x\ny", `a"b`, "ünï", "k8s.io/name", "[x]", "{x}", "'q'", "1e3", ".5", "-"} {
		var got string
		if err := yaml.Unmarshal([]byte("v: "+quote(s)), &struct{ V *string }{&got}); err != nil {
			t.Errorf("quote(%q) = %s: %v", s, quote(s), err)
			continue
		}
		if got != s {
			t.Errorf("quote(%q) = %s reads back as %q", s, quote(s), got)
		}
	}
}

func TestRuleNames(t *testing.T) {
	taken := map[string]bool{}
	long := strings.Repeat("a", 50) + "-" + strings.Repeat("b", 50)
	a := unique(sanitize(long+"-egress0"), taken, maxRuleName)
	b := unique(sanitize(long+"-egress1"), taken, maxRuleName)
	c := unique(sanitize(long+"-egress1"), taken, maxRuleName)
	for _, n := range []string{a, b, c} {
		if len(n) > maxRuleName || !plain.MatchString(n) {
			t.Errorf("rule name %q: longer than %d or not a valid name", n, maxRuleName)
		}
	}
	if a == b || b == c || a == c {
		t.Errorf("names collide: %q %q %q", a, b, c)
	}
	if got := sanitize("_weird name/x"); got != "weird-name-x" {
		t.Errorf("sanitize: got %q, want weird-name-x", got)
	}
	if got := unique("web", taken, 0) + " " + unique("web", taken, 0); got != "web web-2" {
		t.Errorf("unique: got %q, want \"web web-2\"", got)
	}
}

// TestJSON: kubectl get -o json output is read as well; JSON is YAML.
func TestJSON(t *testing.T) {
	data := `{"apiVersion": "v1", "kind": "List", "items": [
  {"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
   "metadata": {"name": "j"},
   "spec": {"tier": "Admin", "priority": 1, "subject": {"namespaces": {"matchLabels": {"team": "a"}}},
            "egress": [{"name": "x", "action": "Accept", "to": [{"domainNames": ["*.example.com"]}]}]}}]}`
	res := Import(NPEP, []Input{{Name: "j.json", Data: []byte(data)}}, Options{})
	if len(res.Problems) != 0 || res.Rules != 1 {
		t.Fatalf("got %d rules, problems %v; want 1 rule, none", res.Rules, res.Problems)
	}
	want := "  # j.json:5:24: ClusterNetworkPolicy j spec.egress[0]\n  - name: j-x\n    from: [j]\n    to: [\"**.example.com\"]\n    ports: [1-65535, 1-65535/udp]\n"
	if !strings.Contains(res.Policy, want) {
		t.Errorf("policy lacks\n%s\ngot:\n%s", want, res.Policy)
	}
}
