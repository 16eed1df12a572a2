package policy

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/fqdngate/fqdngate/internal/dnsname"
	"github.com/fqdngate/fqdngate/internal/netaddr"
)

// fuzzSources are the sources FuzzDecide picks from by index.
var fuzzSources = []netip.Addr{srcOffice, srcOffice6, srcCI, srcLab, srcNoGroup, srcCIMapped, srcCINAT64, {}}

var fuzzUsers = []string{"", "alice", "bob", "mallory"}

// FuzzDecide checks Decide against reference, a brute-force loop over the
// rules that uses Pattern.Match and nothing of the index. Run it with:
//
//	go test -run '^$' -fuzz '^FuzzDecide$' -fuzztime 30s ./internal/policy/
func FuzzDecide(f *testing.F) {
	p := loadTestPolicy(f, "testdata/decide.yaml")
	for _, c := range decideCases {
		name := c.q.Name
		if name == "" && c.q.Addr.IsValid() {
			name = c.q.Addr.String()
		}
		src, user := 0, 0
		for i, s := range fuzzSources {
			if s == c.q.Source {
				src = i
			}
		}
		for i, u := range fuzzUsers {
			if u == c.q.User {
				user = i
			}
		}
		f.Add(name, c.q.Port, c.q.Proto == UDP, c.q.AnyPort, uint8(src), uint8(user))
	}
	f.Fuzz(func(t *testing.T, name string, port uint16, udp, anyPort bool, src, user uint8) {
		q := Query{
			Source:  fuzzSources[int(src)%len(fuzzSources)],
			User:    fuzzUsers[int(user)%len(fuzzUsers)],
			Name:    name,
			Port:    port,
			AnyPort: anyPort,
		}
		if udp {
			q.Proto = UDP
		}
		compareWithReference(t, p, q)
		// The same text as an address query, when it is one.
		if a, err := netip.ParseAddr(name); err == nil {
			q.Name, q.Addr = "", a
			compareWithReference(t, p, q)
		}
	})
}

func compareWithReference(t *testing.T, p *Policy, q Query) {
	t.Helper()
	got := p.Decide(q)
	want := reference(p, q)
	if got.Action != want.Action || got.Reason != want.Reason || got.Rule != want.Rule || got.NearRule != want.NearRule {
		t.Fatalf("Decide(%+v) = {%v %v rule %q near %q}, reference says {%v %v rule %q near %q}",
			q, got.Action, got.Reason, got.RuleName(), ruleName(got.NearRule),
			want.Action, want.Reason, want.RuleName(), ruleName(want.NearRule))
	}
}

func ruleName(r *Rule) string {
	if r == nil {
		return ""
	}
	return r.Name
}

// reference decides q the slow, obvious way: every rule in order.
func reference(p *Policy, q Query) Decision {
	var (
		matches   func(r *Rule) bool
		isAddress bool
	)
	switch a, err := netip.ParseAddr(q.Name); {
	case q.Name == "" || err == nil && a.Zone() == "":
		if q.Name != "" {
			q.Addr = a
		}
		if !q.Addr.IsValid() {
			return Decision{Reason: ReasonInvalidName}
		}
		isAddress = true
		raw := q.Addr.WithZone("")
		unmapped := netaddr.Unmap(raw)
		matches = func(r *Rule) bool {
			for _, pfx := range r.Prefixes {
				if pfx.Contains(raw) || pfx.Contains(unmapped) {
					return true
				}
			}
			return false
		}
	default:
		// Decide takes names as they arrive on the wire: ASCII only.
		for i := 0; i < len(q.Name); i++ {
			if q.Name[i] >= 0x80 {
				return Decision{Reason: ReasonInvalidName}
			}
		}
		n, err := dnsname.Parse(q.Name)
		if err != nil {
			return Decision{Reason: ReasonInvalidName}
		}
		matches = func(r *Rule) bool {
			for _, pat := range r.Names {
				if pat.Match(n) {
					return true
				}
			}
			return false
		}
	}
	var portMiss, sourceMiss *Rule
	for _, r := range p.Rules {
		if !matches(r) {
			continue
		}
		if !referenceSource(p, r, q) {
			if sourceMiss == nil {
				sourceMiss = r
			}
			continue
		}
		if !q.AnyPort && !r.portAllowed(q.Port, q.Proto) {
			if portMiss == nil {
				portMiss = r
			}
			continue
		}
		return Decision{Action: Allow, Reason: ReasonMatched, Rule: r}
	}
	switch {
	case portMiss != nil:
		return Decision{Reason: ReasonPort, NearRule: portMiss}
	case sourceMiss != nil:
		return Decision{Reason: ReasonSource, NearRule: sourceMiss}
	case isAddress:
		return Decision{Reason: ReasonNotAllowedIP}
	}
	return Decision{Reason: ReasonNoRule}
}

func referenceSource(p *Policy, r *Rule, q Query) bool {
	if r.From == nil {
		return true
	}
	src := q.Source
	if src.Is4In6() {
		src = src.Unmap()
	}
	var groups []string
	for g, pfxs := range p.Sources {
		for _, pfx := range pfxs {
			if pfx.Contains(src) {
				groups = append(groups, g)
			}
		}
	}
	groups = append(groups, p.Users[q.User].Groups...)
	for _, g := range r.From {
		for _, have := range groups {
			if g == have {
				return true
			}
		}
	}
	return false
}

// FuzzParse feeds Parse arbitrary bytes: it must not panic, and must return
// either a policy or an ErrorList whose entries are positioned. Run it with:
//
//	go test -run '^$' -fuzz '^FuzzParse$' -fuzztime 30s ./internal/policy/
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.yaml")
	examples, _ := filepath.Glob("../../examples/*.yaml")
	files = append(files, examples...)
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	for _, c := range errorCases {
		f.Add([]byte(c.yaml))
	}
	f.Add([]byte(kubePolicy))
	// The kubernetes section compiled into the kernel features and a
	// forward zone, with a zone and intercepts of the operator's beside.
	f.Add([]byte(kubeAgentPolicy(", forward: [{zone: corp.example.com, to: [198.51.100.53]}]", ", intercept_dns: [198.51.100.10], unfiltered: [198.51.100.0/24]", ", domain: k8s.example, nodelocal: 169.254.20.10", "")))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse("f.yaml", data)
		checkSameAsYAMLv3(t, data, p, err)
		if err == nil {
			if p == nil || p.idx == nil {
				t.Fatal("Parse returned neither a policy nor an error")
			}
			for i, r := range p.Rules {
				if r.Index != i {
					t.Fatalf("rule %q has Index %d at position %d", r.Name, r.Index, i)
				}
				for _, pat := range r.Names {
					// Every name a rule lists is allowed by some rule from
					// some source: Decide must at least not panic on it.
					p.Decide(Query{Name: string(pat.Base), AnyPort: true})
				}
			}
			return
		}
		if p != nil {
			t.Fatal("Parse returned both a policy and an error")
		}
		var list ErrorList
		if !errors.As(err, &list) || len(list) == 0 {
			t.Fatalf("Parse error %v (%T) is not a non-empty ErrorList", err, err)
		}
		for _, e := range list {
			if e.File != "f.yaml" {
				t.Errorf("error names file %q, want f.yaml: %v", e.File, e)
			}
			if e.Line == 0 && !fileLevel(e.Msg) {
				t.Errorf("error without a position: %v", e)
			}
			if e.Line > 0 && e.Col == 0 {
				t.Errorf("error with a line but no column: %v", e)
			}
		}
	})
}

// checkSameAsYAMLv3 checks that Parse's result for data, p and err, is
// what reading data with yaml.v3 alone gives: the same policy or the same
// errors, whether fastyaml took the file or not.
func checkSameAsYAMLv3(t *testing.T, data []byte, p *Policy, err error) {
	t.Helper()
	slow, serr := parseWith(Source{Name: "f.yaml", Data: data}, nil, false, false)
	if (err == nil) != (serr == nil) || err != nil && err.Error() != serr.Error() {
		t.Fatalf("Parse's error:\n%v\nwith yaml.v3 alone:\n%v", err, serr)
	}
	if !reflect.DeepEqual(p, slow) {
		t.Fatalf("Parse and yaml.v3 alone compiled different policies from %.300q", data)
	}
}

// FuzzDocument checks that document, which reads through a yieldingReader
// so a reload lets answers be served, sees exactly what yaml.Unmarshal sees
// of the same bytes: the same tree, or the same error. Run it with:
//
//	go test -run '^$' -fuzz '^FuzzDocument$' -fuzztime 30s ./internal/policy/
func FuzzDocument(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.yaml")
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	for _, c := range errorCases {
		f.Add([]byte(c.yaml))
	}
	for _, s := range []string{"", "\n", "# only a comment\n", "---\n", "a: 1\n---\nb: [\n", "a: &x [*x]\n", "\xff\xfea\x00:\x00 \x001\x00"} {
		f.Add([]byte(s))
	}
	f.Fuzz(checkDocument)
}

// TestDocumentLarge is FuzzDocument's check on policies larger than the
// decoder's reads (too large to fuzz from: the fuzzer spends its time
// minimizing them), cut at every few kilobytes too, so that errors fall
// across reads.
func TestDocumentLarge(t *testing.T) {
	const cut = 16 << 10
	for _, n := range []int{1000, 2000} {
		data := benchPolicyYAML(n)
		if len(data) < 2*cut {
			t.Fatalf("%d rules are %d bytes, not more than %d", n, len(data), 2*cut)
		}
		checkDocument(t, data)
		for i := cut - 7; i < len(data); i += 5003 {
			checkDocument(t, append(data[:i:i], "\n  - name: [\n"...))
		}
	}
}

func checkDocument(t *testing.T, data []byte) {
	got, gerr := document(Source{Name: "f.yaml", Data: data})
	var root yaml.Node
	var want *yaml.Node
	var werr *Error
	if err := yaml.Unmarshal(data, &root); err != nil {
		werr = yamlError("f.yaml", err)
	} else if len(root.Content) > 0 && !isNull(root.Content[0]) {
		want = root.Content[0]
	}
	if (gerr == nil) != (werr == nil) || gerr != nil && gerr.Error() != werr.Error() {
		t.Fatalf("document error %v, yaml.Unmarshal's %v", gerr, werr)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("document and yaml.Unmarshal built different trees for %.200q...", data)
	}
}

// fileLevel reports whether msg is about the file as a whole, the only
// errors allowed to have no position.
func fileLevel(msg string) bool {
	for _, prefix := range []string{"the policy is empty", "not valid YAML", "dns.upstreams is not set", "too many errors"} {
		if strings.HasPrefix(msg, prefix) {
			return true
		}
	}
	return false
}
