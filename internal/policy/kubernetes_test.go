package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// kubePolicy is a node agent's policy with three pod-selecting groups
// and a CIDR group, which kubernetes tests build on.
const kubePolicy = `dns: {upstreams: [192.0.2.53]}
kubernetes:
  node: node-a
  cluster_cidrs: [10.244.0.0/16, 10.96.0.0/12, "fd00:244::/56"]
  dns: {address: [10.96.0.10]}
sources:
  checkout:
    kubernetes:
      namespaces: [payments]
      pod_selector:
        matchLabels: {app: checkout}
        matchExpressions: [{key: tier, operator: In, values: [web]}]
  team-pay:
    kubernetes:
      namespace_selector: {matchLabels: {team: pay}}
  both:
    cidrs: [192.0.2.0/28]
    kubernetes:
      namespaces: [payments, shop]
      namespace_selector: {matchExpressions: [{key: env, operator: NotIn, values: [dev]}]}
      pod_selector: {matchExpressions: [{key: debug, operator: DoesNotExist}]}
  office: [198.51.100.0/24]
rules:
  - name: bank
    from: [checkout]
    to: [api.bank.example]
  - name: pay
    from: [team-pay, both]
    to: [pay.example]
  - name: office
    from: [office]
    to: [office.example]
`

func parseKube(t *testing.T) *Policy {
	t.Helper()
	p, err := Parse("p.yaml", []byte(kubePolicy))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestKubernetesSection(t *testing.T) {
	p := parseKube(t)
	k := p.Kubernetes
	if k == nil {
		t.Fatal("Kubernetes is nil")
	}
	want := &Kubernetes{
		Node:         "node-a",
		ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("10.96.0.0/12"), netip.MustParsePrefix("fd00:244::/56")},
		DNS:          KubeDNS{Addresses: []netip.Addr{netip.MustParseAddr("10.96.0.10")}, Domain: "cluster.local"},
		At:           Pos{2, 1},
	}
	if !reflect.DeepEqual(k, want) {
		t.Errorf("got %+v, want %+v", k, want)
	}
	if got := p.DynamicGroups(); !slices.Equal(got, []string{"both", "checkout", "team-pay"}) {
		t.Errorf("DynamicGroups = %v", got)
	}
	if p.Dynamic("office") {
		t.Error("office is a CIDR group, not dynamic")
	}
	// The pods' groups are inside: fqdngate serves their DNS.
	if !p.Inside(netip.MustParseAddr("10.244.3.7")) || !p.Inside(netip.MustParseAddr("fd00:244::7")) {
		t.Error("a pod address is not inside")
	}
}

func TestKubernetesSettings(t *testing.T) {
	defer func(g func(string) string) { getenv = g }(getenv)
	getenv = func(k string) string {
		if k == "NODE_NAME" {
			return "node-from-env"
		}
		return ""
	}
	p, err := Parse("p.yaml", []byte(`dns: {upstreams: [192.0.2.53]}
kubernetes:
  kubeconfig: /etc/fqdngate/kubeconfig
  mode: gateway
  cluster_cidrs: [10.244.0.0/16, 10.96.0.0/12]
  dns: {address: [10.96.0.10, 10.96.0.11], domain: k8s.example, nodelocal: 169.254.20.10}
rules: []
`))
	if err != nil {
		t.Fatal(err)
	}
	want := &Kubernetes{
		Kubeconfig:   "/etc/fqdngate/kubeconfig",
		Node:         "", // a gateway follows every node, whatever the environment says
		Mode:         KubeGateway,
		ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("10.96.0.0/12")},
		DNS:          KubeDNS{Addresses: []netip.Addr{netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("10.96.0.11")}, Domain: "k8s.example", NodeLocal: netip.MustParseAddr("169.254.20.10")},
		At:           Pos{2, 1},
	}
	if !reflect.DeepEqual(p.Kubernetes, want) {
		t.Errorf("got %+v, want %+v", p.Kubernetes, want)
	}
	// A node agent's node comes from the environment when it is empty.
	for _, y := range []string{"kubernetes: {cluster_cidrs: [10.244.0.0/16], dns: {address: 10.244.0.10}}\nrules: []\n", "kubernetes: {node: \"\", cluster_cidrs: [10.244.0.0/16], dns: {address: 10.244.0.10}}\nrules: []\n"} {
		p, err = Parse("p.yaml", []byte(y))
		if err != nil {
			t.Fatal(err)
		}
		if p.Kubernetes.Node != "node-from-env" {
			t.Errorf("%s: node = %q, want node-from-env", y, p.Kubernetes.Node)
		}
	}
}

func TestKubernetesErrors(t *testing.T) {
	defer func(g func(string) string) { getenv = g }(getenv)
	getenv = func(string) string { return "" }
	const head = "dns: {upstreams: [192.0.2.53]}\n"
	const kube = head + "kubernetes: {node: n1, cluster_cidrs: [10.244.0.0/16], dns: {address: 10.244.0.10}}\n"
	cases := []struct {
		name      string
		yaml      string
		line, col int
		want      []string
	}{
		{"source without kubernetes section", head + "sources:\n  web: {kubernetes: {namespaces: [web]}}\nrules: []\n", 3, 3,
			[]string{`source group "web" selects pods`, "no kubernetes section", "cluster_cidrs"}},
		{"bad operator", kube + "sources:\n  web:\n    kubernetes:\n      pod_selector:\n        matchExpressions: [{key: tier, operator: in, values: [web]}]\n", 7, 50,
			[]string{`operator "in" is not one of In, NotIn, Exists, DoesNotExist`, "write In", "case-sensitive"}},
		{"no operator", kube + "sources:\n  web:\n    kubernetes:\n      pod_selector:\n        matchExpressions: [{key: tier, values: [web]}]\n", 7, 28,
			[]string{`has no operator`}},
		{"In without values", kube + "sources:\n  web:\n    kubernetes:\n      pod_selector:\n        matchExpressions: [{key: tier, operator: In}]\n", 7, 28,
			[]string{`In on key "tier" needs values`}},
		{"In with empty values", kube + "sources:\n  web:\n    kubernetes:\n      pod_selector:\n        matchExpressions: [{key: tier, operator: NotIn, values: []}]\n", 7, 65,
			[]string{`NotIn on key "tier" needs values`}},
		{"Exists with values", kube + "sources:\n  web:\n    kubernetes:\n      pod_selector:\n        matchExpressions: [{key: tier, operator: Exists, values: [a]}]\n", 7, 66,
			[]string{`Exists on key "tier" takes no values`}},
		{"bad label key", kube + "sources:\n  web:\n    kubernetes:\n      pod_selector: {matchLabels: {\"a b\": x}}\n", 6, 36,
			[]string{`matchLabels: label key "a b" is not valid`}},
		{"bad label value", kube + "sources:\n  web:\n    kubernetes:\n      namespace_selector: {matchLabels: {team: \"no spaces\"}}\n", 6, 42,
			[]string{`namespace_selector.matchLabels: label value "no spaces" (of key team) is not valid`}},
		{"expression without key", kube + "sources:\n  web:\n    kubernetes:\n      pod_selector: {matchExpressions: [{operator: Exists}]}\n", 6, 41,
			[]string{"has no key"}},
		{"unknown selector key", kube + "sources:\n  web:\n    kubernetes:\n      pod_selector: {matchLabel: {a: b}}\n", 6, 22,
			[]string{`unknown key "matchLabel"`, `did you mean "matchLabels"?`}},
		{"unknown source kubernetes key", kube + "sources:\n  web:\n    kubernetes: {namespace: [a]}\n", 5, 18,
			[]string{`unknown key "namespace"`, `did you mean "namespaces"?`}},
		{"empty kubernetes source", kube + "sources:\n  web:\n    kubernetes: {}\n", 5, 17,
			[]string{"every pod of every namespace", "namespace_selector: {}"}},
		{"empty namespaces", kube + "sources:\n  web:\n    kubernetes: {namespaces: []}\n", 5, 30,
			[]string{"namespaces is empty"}},
		{"bad namespace", kube + "sources:\n  web:\n    kubernetes: {namespaces: [Payments]}\n", 5, 31,
			[]string{`"Payments" is not a namespace name`}},
		{"no node", head + "kubernetes: {cluster_cidrs: [10.244.0.0/16]}\nrules: []\n", 2, 1,
			[]string{"kubernetes.node is empty and $NODE_NAME is not set", "mode: gateway"}},
		{"bad mode", head + "kubernetes: {node: n1, mode: daemonset, cluster_cidrs: [10.244.0.0/16]}\nrules: []\n", 2, 30,
			[]string{"kubernetes.mode must be node", `not "daemonset"`}},
		{"no cluster_cidrs", head + "kubernetes: {node: n1}\nrules: []\n", 2, 1,
			[]string{"kubernetes.cluster_cidrs is empty"}},
		{"bad cluster cidr", head + "kubernetes: {node: n1, cluster_cidrs: [10.244.0.1/16]}\nrules: []\n", 2, 40,
			[]string{"kubernetes.cluster_cidrs", "bits set past the prefix length"}},
		{"old dns service", head + "kubernetes: {node: n1, cluster_cidrs: [10.244.0.0/16], dns: {service: kube-dns}}\nrules: []\n", 2, 71,
			[]string{"kubernetes.dns.service is replaced by kubernetes.dns.address", "get svc kube-dns"}},
		{"no dns address", head + "kubernetes: {node: n1, cluster_cidrs: [10.244.0.0/16]}\nrules: []\n", 2, 1,
			[]string{"kubernetes.dns.address is not set", "address: [10.96.0.10]", "kubectl -n kube-system get svc kube-dns -o jsonpath='{.spec.clusterIPs}'"}},
		{"empty dns address", head + "kubernetes: {node: n1, cluster_cidrs: [10.244.0.0/16], dns: {address: []}}\nrules: []\n", 2, 71,
			[]string{"kubernetes.dns.address is not set", "get svc kube-dns"}},
		{"dns address a name", head + "kubernetes: {node: n1, cluster_cidrs: [10.244.0.0/16], dns: {address: kube-dns}}\nrules: []\n", 2, 71,
			[]string{`kubernetes.dns.address: "kube-dns" is not an IP address`, "get svc kube-dns"}},
		{"dns address a CIDR", head + "kubernetes: {node: n1, cluster_cidrs: [10.244.0.0/16], dns: {address: 10.244.0.0/24}}\nrules: []\n", 2, 71,
			[]string{`"10.244.0.0/24" is not an IP address`}},
		{"dns address outside", head + "kubernetes: {node: n1, cluster_cidrs: [10.244.0.0/16], dns: {address: [10.244.0.10, 198.51.100.10]}}\nrules: []\n", 2, 85,
			[]string{"kubernetes.dns.address: 198.51.100.10 is not inside kubernetes.cluster_cidrs", "get svc kube-dns"}},
		{"dns address twice", head + "kubernetes: {node: n1, cluster_cidrs: [10.244.0.0/16], dns: {address: [10.244.0.10, 10.244.0.10]}}\nrules: []\n", 2, 85,
			[]string{"10.244.0.10 is listed twice"}},
		{"bad nodelocal", head + "kubernetes: {node: n1, cluster_cidrs: [10.244.0.0/16], dns: {address: 10.244.0.10, nodelocal: nodelocal.example}}\nrules: []\n", 2, 95,
			[]string{"kubernetes.dns.nodelocal", "is not an IP address"}},
		{"bad node name", head + "kubernetes: {node: \"Node A\", cluster_cidrs: [10.244.0.0/16]}\nrules: []\n", 2, 20,
			[]string{`kubernetes.node "Node A" is not a node name`}},
		{"hook output", head + "firewall: {backend: nftables}\nkubernetes: {node: n1, cluster_cidrs: [10.244.0.0/16]}\nrules: []\n", 3, 1,
			[]string{"firewall.hook: output does not filter", "set firewall.hook: forward"}},
		{"long form without cidrs or kubernetes", kube + "sources:\n  web: {interfaces: [eth1]}\n", 4, 3,
			[]string{"has no cidrs and selects no pods"}},
	}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("p.yaml", []byte(tt.yaml))
			var list ErrorList
			if !errors.As(err, &list) {
				t.Fatalf("Parse: got %v, want an ErrorList", err)
			}
			for _, e := range list {
				if e.Line == tt.line && e.Col == tt.col && containsAll(e.Msg, tt.want) {
					return
				}
			}
			t.Errorf("got errors:\n%v\nwant one at p.yaml:%d:%d containing %q", err, tt.line, tt.col, tt.want)
		})
	}
}

// TestKubernetesInFleet: the kubernetes section is node-local, the
// groups that select pods are shared.
func TestKubernetesInFleet(t *testing.T) {
	local := fleetLocal + "kubernetes: {node: n1, cluster_cidrs: [10.244.0.0/16], dns: {address: 10.244.0.10}}\n"
	shared := fleetShared + "    from: [web]\nsources:\n  web: {kubernetes: {namespaces: [web]}}\n"
	p, err := Compose(Source{Name: localName, Data: []byte(local)}, &Source{Name: sharedName, Data: []byte(shared)})
	if err != nil {
		t.Fatal(err)
	}
	if p.Kubernetes == nil || !p.Dynamic("web") {
		t.Fatalf("kubernetes %v, dynamic web %v", p.Kubernetes, p.Dynamic("web"))
	}
	// The local section's zone joins the shared dns.forward.
	withZone := strings.Replace(shared, "dns: {upstreams: [192.0.2.53]}", "dns: {upstreams: [192.0.2.53], forward: [{zone: corp.example.com, to: [198.51.100.53]}]}", 1)
	p, err = Compose(Source{Name: localName, Data: []byte(local)}, &Source{Name: sharedName, Data: []byte(withZone)})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"kube-dns.kube-system.svc.cluster.local", "git.corp.example.com"} {
		if p.Forwarded(n) == nil {
			t.Errorf("%s is not forwarded in the composed policy", n)
		}
	}
	// A shared zone for the cluster domain clashes, at the local key.
	clash := strings.Replace(shared, "dns: {upstreams: [192.0.2.53]}", "dns: {upstreams: [192.0.2.53], forward: [{zone: cluster.local, to: [10.244.0.10]}]}", 1)
	_, err = Compose(Source{Name: localName, Data: []byte(local)}, &Source{Name: sharedName, Data: []byte(clash)})
	if err == nil || !strings.Contains(err.Error(), localName+":4:1: kubernetes.dns.domain cluster.local is forwarded") || !strings.Contains(err.Error(), "dns.forward ("+sharedName+":1:") {
		t.Errorf("cluster domain in the shared dns.forward: got %v", err)
	}
	_, err = Compose(Source{Name: localName, Data: []byte(fleetLocal)}, &Source{Name: sharedName, Data: []byte(shared + "kubernetes: {node: n1, cluster_cidrs: [10.244.0.0/16]}\n")})
	if err == nil || !strings.Contains(err.Error(), "kubernetes is set on each gateway") {
		t.Errorf("kubernetes in the shared half: got %v", err)
	}
}

func TestPodGroups(t *testing.T) {
	p := parseKube(t)
	cases := []struct {
		name string
		pod  Pod
		want []string
	}{
		{"checkout web in payments", Pod{Namespace: "payments", Name: "c1", Labels: map[string]string{"app": "checkout", "tier": "web"}}, []string{"both", "checkout"}},
		{"checkout without tier", Pod{Namespace: "payments", Name: "c2", Labels: map[string]string{"app": "checkout"}}, []string{"both"}},
		{"checkout in another namespace", Pod{Namespace: "shop", Name: "c3", Labels: map[string]string{"app": "checkout", "tier": "web"}}, []string{"both"}},
		{"namespace labelled team pay", Pod{Namespace: "ledger", Name: "l1", NamespaceLabels: map[string]string{"team": "pay"}}, []string{"team-pay"}},
		{"debug pod excluded", Pod{Namespace: "shop", Name: "d1", Labels: map[string]string{"debug": "1"}}, nil},
		{"dev namespace excluded", Pod{Namespace: "shop", Name: "s1", NamespaceLabels: map[string]string{"env": "dev"}}, nil},
		{"both namespace conditions", Pod{Namespace: "payments", Name: "p1", NamespaceLabels: map[string]string{"env": "prod", "team": "pay"}}, []string{"both", "team-pay"}},
		{"nothing", Pod{Namespace: "default", Name: "x"}, nil},
	}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			if got := p.PodGroups(&tt.pod); !slices.Equal(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestMembersDecide(t *testing.T) {
	p := parseKube(t)
	checkout := netip.MustParseAddr("10.244.1.5")
	ledger := netip.MustParseAddr("fd00:244::9")
	q := func(src netip.Addr, name string) Decision {
		return p.Decide(Query{Source: src, Name: name, Port: 443, Proto: TCP})
	}
	// Before any snapshot, and with one that is not synced: no members.
	if d := q(checkout, "api.bank.example"); d.Action != Deny || d.Reason != ReasonSource {
		t.Errorf("before a snapshot: %v %v, want deny (source)", d.Action, d.Reason)
	}
	pods := []Pod{
		{Namespace: "payments", Name: "checkout-1", Labels: map[string]string{"app": "checkout", "tier": "web"}, Addrs: []netip.Addr{checkout}},
		{Namespace: "ledger", Name: "ledger-1", NamespaceLabels: map[string]string{"team": "pay"}, Addrs: []netip.Addr{ledger}},
	}
	if err := p.SetMembers(p.NewMembers(pods, false)); err != nil {
		t.Fatal(err)
	}
	if d := q(checkout, "api.bank.example"); d.Action != Deny {
		t.Errorf("not synced: %v, want deny", d.Action)
	}
	if g := p.GroupsOf(checkout); g != nil {
		t.Errorf("not synced: GroupsOf = %v, want none", g)
	}
	if err := p.SetMembers(p.NewMembers(pods, true)); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		src              netip.Addr
		name             string
		action           Action
		rule, group, pod string
	}{
		{checkout, "api.bank.example", Allow, "bank", "checkout", "payments/checkout-1"},
		{checkout, "pay.example", Allow, "pay", "both", "payments/checkout-1"},
		{netip.MustParseAddr("::ffff:10.244.1.5"), "api.bank.example", Allow, "bank", "checkout", "payments/checkout-1"},
		{ledger, "pay.example", Allow, "pay", "team-pay", "ledger/ledger-1"},
		{ledger, "api.bank.example", Deny, "", "", "ledger/ledger-1"},
		{netip.MustParseAddr("10.244.1.6"), "pay.example", Deny, "", "", ""},
		{netip.MustParseAddr("192.0.2.3"), "pay.example", Allow, "pay", "both", ""}, // the CIDR half of both
	} {
		d := q(tt.src, tt.name)
		if d.Action != tt.action || d.RuleName() != tt.rule || (tt.action == Allow && d.Group != tt.group) {
			t.Errorf("%s → %s: %v by %q from %q, want %v by %q from %q", tt.src, tt.name, d.Action, d.RuleName(), d.Group, tt.action, tt.rule, tt.group)
		}
		ref, ok := p.PodOf(tt.src)
		if got := ref.String(); ok != (tt.pod != "") || (ok && got != tt.pod) {
			t.Errorf("PodOf(%s) = %q, %v; want %q", tt.src, got, ok, tt.pod)
		}
	}
	if got := p.GroupsOf(checkout); !slices.Equal(got, []string{"both", "checkout"}) {
		t.Errorf("GroupsOf(checkout) = %v", got)
	}
	// A snapshot of another policy is refused: its groups are not p's.
	other := parseKube(t)
	if err := p.SetMembers(other.NewMembers(pods, true)); !errors.Is(err, ErrForeignMembers) {
		t.Errorf("foreign snapshot: got %v", err)
	}
}

// TestMembersAddressClaimedTwice: an address that two pods claim is in
// the groups both are in, never in one only the other is in.
func TestMembersAddressClaimedTwice(t *testing.T) {
	p := parseKube(t)
	a := netip.MustParseAddr("10.244.1.5")
	m := p.NewMembers([]Pod{
		{Namespace: "payments", Name: "old", Labels: map[string]string{"app": "checkout", "tier": "web"}, Addrs: []netip.Addr{a}},
		{Namespace: "payments", Name: "new", Labels: map[string]string{"app": "other"}, Addrs: []netip.Addr{a}},
	}, true)
	mb, ok := m.Lookup(a)
	if !ok || !slices.Equal(mb.Groups, []string{"both"}) || mb.Pod.String() != "payments/new" {
		t.Errorf("got %+v, %v; want payments/new in [both]", mb, ok)
	}
}

// TestDecideWithMembersDoesNotAllocate keeps the hot path free of
// allocations with pod-selecting groups too.
func TestDecideWithMembersDoesNotAllocate(t *testing.T) {
	p := parseKube(t)
	src := netip.MustParseAddr("10.244.1.5")
	if err := p.SetMembers(p.NewMembers([]Pod{{Namespace: "payments", Name: "c", Labels: map[string]string{"app": "checkout", "tier": "web"}, Addrs: []netip.Addr{src}}}, true)); err != nil {
		t.Fatal(err)
	}
	q := Query{Source: src, Name: "pay.example", Port: 443, Proto: TCP}
	if n := testing.AllocsPerRun(100, func() { p.Decide(q) }); n != 0 {
		t.Errorf("Decide allocates %v times", n)
	}
}

// TestDocsKubernetesExamples keeps the examples of docs/policy.md's
// kubernetes sections loadable, together.
func TestDocsKubernetesExamples(t *testing.T) {
	defer func(g func(string) string) { getenv = g }(getenv)
	getenv = func(k string) string {
		if k == "NODE_NAME" {
			return "node-a"
		}
		return ""
	}
	doc, err := os.ReadFile("../../docs/policy.md")
	if err != nil {
		t.Fatal(err)
	}
	block := func(start string) string {
		s := string(doc)
		i := strings.Index(s, "```yaml\n"+start)
		if i < 0 {
			t.Fatalf("docs/policy.md has no example starting %q", start)
		}
		s, _, _ = strings.Cut(s[i+len("```yaml\n"):], "```")
		return s
	}
	y := "dns: {upstreams: [192.0.2.53]}\n" + block("kubernetes:\n") + block("sources:\n  checkout:\n") + "rules: [{name: r, from: [checkout, team-pay, build], to: [example.com]}]\n"
	p, err := Parse("docs/policy.md", []byte(y))
	if err != nil {
		t.Fatalf("the examples do not load:\n%v\n%s", err, y)
	}
	if p.Kubernetes.Node != "node-a" || !p.Kubernetes.DNS.NodeLocal.IsValid() || len(p.DynamicGroups()) != 3 {
		t.Errorf("got %+v, groups %v", p.Kubernetes, p.DynamicGroups())
	}
}

// kubeAgent is a node agent's policy with the nftables backend, which
// the kubernetes section is compiled into the general features of.
const kubeAgent = `listen: {dns: "[::]:53"}
dns: {upstreams: [192.0.2.53]%s}
firewall: {backend: nftables, hook: forward%s}
kubernetes:
  node: n1
  cluster_cidrs: [10.244.0.0/16, 10.96.0.0/12]
  dns: {address: [10.96.0.10]%s}
sources:
  web: {kubernetes: {namespaces: [web]}}
rules:
  - {name: r, from: [web], to: [%s]}
`

func kubeAgentPolicy(dns, fw, kdns, to string) string {
	if to == "" {
		to = "api.example.com"
	}
	return fmt.Sprintf(kubeAgent, dns, fw, kdns, to)
}

// TestKubernetesCompiled: the section becomes firewall.unfiltered,
// firewall.intercept_dns and a dns.forward zone, added to what the
// operator wrote.
func TestKubernetesCompiled(t *testing.T) {
	pfx := func(s ...string) (out []netip.Prefix) {
		for _, v := range s {
			out = append(out, netip.MustParsePrefix(v))
		}
		return out
	}
	addrs := func(s ...string) (out []netip.Addr) {
		for _, v := range s {
			out = append(out, netip.MustParseAddr(v))
		}
		return out
	}
	cases := []struct {
		name       string
		yaml       string
		unfiltered []netip.Prefix
		intercept  []netip.Addr
		zones      []string // "zone to,to"
	}{
		{"section alone", kubeAgentPolicy("", "", "", ""),
			pfx("10.244.0.0/16", "10.96.0.0/12"), addrs("10.96.0.10"), []string{"cluster.local 10.96.0.10:53"}},
		{"nodelocal and domain", kubeAgentPolicy("", "", ", domain: k8s.example, nodelocal: 169.254.20.10", ""),
			pfx("10.244.0.0/16", "10.96.0.0/12"), addrs("10.96.0.10", "169.254.20.10"), []string{"k8s.example 10.96.0.10:53"}},
		{"added to the operator's", kubeAgentPolicy(", forward: [{zone: corp.example.com, to: [198.51.100.53]}]",
			", intercept_dns: [198.51.100.10], unfiltered: [198.51.100.0/24]", "", ""),
			pfx("198.51.100.0/24", "10.244.0.0/16", "10.96.0.0/12"), addrs("198.51.100.10", "10.96.0.10"),
			[]string{"corp.example.com 198.51.100.53:53", "cluster.local 10.96.0.10:53"}},
		{"without the kernel backend only the zone", "dns: {upstreams: [192.0.2.53]}\nkubernetes: {node: n1, cluster_cidrs: [10.244.0.0/16, 10.96.0.0/12], dns: {address: [10.96.0.10, 10.96.0.11]}}\nsources: {web: {kubernetes: {namespaces: [web]}}}\nrules: []\n",
			nil, nil, []string{"cluster.local 10.96.0.10:53,10.96.0.11:53"}},
	}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse("p.yaml", []byte(tt.yaml))
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(p.Firewall.Unfiltered, tt.unfiltered) {
				t.Errorf("unfiltered: got %v, want %v", p.Firewall.Unfiltered, tt.unfiltered)
			}
			if !slices.Equal(p.Firewall.InterceptDNS, tt.intercept) {
				t.Errorf("intercept_dns: got %v, want %v", p.Firewall.InterceptDNS, tt.intercept)
			}
			var zones []string
			for _, z := range p.DNS.Forward {
				if strings.HasSuffix(string(z.Zone), ".arpa") {
					continue // TestKubernetesReverseZones
				}
				var to []string
				for _, u := range z.To {
					to = append(to, u.Addr.String())
				}
				zones = append(zones, string(z.Zone)+" "+strings.Join(to, ","))
			}
			if !slices.Equal(zones, tt.zones) {
				t.Errorf("forward: got %q, want %q", zones, tt.zones)
			}
			// The forward zone is the one dns.forward makes: cluster
			// names are forwarded, search-path forms included.
			dom := strings.Fields(tt.zones[len(tt.zones)-1])[0]
			for _, n := range []string{"kube-dns.kube-system.svc." + dom, "api.example.com.web.svc." + dom + "."} {
				if z := p.Forwarded(n); z == nil || string(z.Zone) != dom {
					t.Errorf("Forwarded(%q) = %v, want the zone %s", n, z, dom)
				}
			}
			if z := p.Forwarded("api.example.com"); z != nil {
				t.Errorf("Forwarded(api.example.com) = %v, want nil", z)
			}
			// Pods are inside: their DNS is answered and steered.
			if !p.Inside(netip.MustParseAddr("10.244.1.5")) {
				t.Error("a pod address is not inside")
			}
		})
	}
}

// TestKubernetesCompiledErrors: problems the general features find in
// the values the section gives them point at the kubernetes keys.
func TestKubernetesCompiledErrors(t *testing.T) {
	cases := []struct {
		name      string
		yaml      string
		line, col int
		want      []string
	}{
		{"zone also in dns.forward", kubeAgentPolicy(", forward: [{zone: cluster.local., to: [10.96.0.10]}]", "", ", domain: cluster.local", ""), 7, 40,
			[]string{"kubernetes.dns.domain cluster.local is forwarded to kubernetes.dns.address", "dns.forward (p.yaml:2:49) forwards it too", "remove that dns.forward item"}},
		{"zone also in dns.forward, default domain", kubeAgentPolicy(", forward: [{zone: cluster.local, to: [10.96.0.10]}]", "", "", ""), 4, 1,
			[]string{"kubernetes.dns.domain cluster.local is forwarded"}},
		{"rule names a cluster name", kubeAgentPolicy("", "", ", domain: cluster.local", "db.svc.cluster.local"), 7, 40,
			[]string{"dns.forward: zone cluster.local covers \"db.svc.cluster.local\" of rule \"r\""}},
		{"address twice with intercept_dns", kubeAgentPolicy("", ", intercept_dns: [10.96.0.10]", "", ""), 7, 19,
			[]string{"firewall.intercept_dns: 10.96.0.10 is listed twice"}},
		{"nodelocal the listener cannot receive", strings.Replace(kubeAgentPolicy("", "", ", nodelocal: 169.254.20.10", ""), `[::]:53`, `127.0.0.1:53`, 1), 7, 43,
			[]string{"firewall.intercept_dns: listen.dns 127.0.0.1:53 cannot receive the IPv4 queries", "from 169.254.20.10"}},
		{"inside does not cover the pods", kubeAgentPolicy("", "", "", "") + "inside: {ranges: [192.0.2.0/24, 10.244.0.0/17]}\n", 9, 3,
			[]string{`source group "web" selects pods`, "inside.ranges cover none of them", "add the pod range (like 10.244.0.0/16) to inside.ranges"}},
		{"cluster range every address", strings.Replace(kubeAgentPolicy("", "", "", ""), "[10.244.0.0/16, 10.96.0.0/12]", "[0.0.0.0/0]", 1), 6, 19,
			[]string{"firewall.unfiltered: 0.0.0.0/0 is every address"}},
	}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("p.yaml", []byte(tt.yaml))
			var list ErrorList
			if !errors.As(err, &list) {
				t.Fatalf("Parse: got %v, want an ErrorList", err)
			}
			for _, e := range list {
				if e.Line == tt.line && e.Col == tt.col && containsAll(e.Msg, tt.want) {
					return
				}
			}
			t.Errorf("got errors:\n%v\nwant one at p.yaml:%d:%d containing %q", err, tt.line, tt.col, tt.want)
		})
	}
}

// TestKubernetesExplicitInside: an inside key that covers the pod range
// serves the pods.
func TestKubernetesExplicitInside(t *testing.T) {
	p, err := Parse("p.yaml", []byte(kubeAgentPolicy("", "", "", "")+"inside: {ranges: [10.244.0.0/16]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !p.Inside(netip.MustParseAddr("10.244.1.5")) || p.Inside(netip.MustParseAddr("10.96.0.1")) {
		t.Error("inside should be the pod range only")
	}
}

// TestKubernetesReverseZones: the reverse names of the cluster ranges are
// forwarded to the cluster DNS, like its domain; other reverse names are
// not; a dns.forward item for the same range is a clash at the range.
func TestKubernetesReverseZones(t *testing.T) {
	p, err := Parse("p.yaml", []byte(`dns: {upstreams: [192.0.2.53], forward: [{reverse: 198.51.100.0/24, to: [198.51.100.53]}]}
kubernetes: {node: n1, cluster_cidrs: [10.244.0.0/16, 10.96.0.0/12, "fd00:10:244::/56", 10.250.0.7], dns: {address: 10.96.0.10}}
sources: {web: {kubernetes: {namespaces: [web]}}}
rules: []
`))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ name, zone string }{
		{"5.1.244.10.in-addr.arpa.", "244.10.in-addr.arpa"},
		{"10.0.96.10.in-addr.arpa", "96.10.in-addr.arpa"},
		{"1.0.111.10.in-addr.arpa", "111.10.in-addr.arpa"},
		{"7.0.250.10.in-addr.arpa", "7.0.250.10.in-addr.arpa"},
		{"5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.0.0.4.4.2.0.0.1.0.0.0.0.d.f.ip6.arpa", "0.0.4.4.2.0.0.1.0.0.0.0.d.f.ip6.arpa"},
		{"7.100.51.198.in-addr.arpa", "100.51.198.in-addr.arpa"}, // the operator's, to its own server
		{"1.0.112.10.in-addr.arpa", ""},                          // outside 10.96.0.0/12
		{"8.0.250.10.in-addr.arpa", ""},                          // beside the single address
		{"5.1.245.10.in-addr.arpa", ""},
		{"1.113.0.203.in-addr.arpa", ""},
	} {
		z := p.Forwarded(c.name)
		switch {
		case c.zone == "" && z != nil:
			t.Errorf("Forwarded(%s) = %s, want none", c.name, z.Zone)
		case c.zone != "" && (z == nil || string(z.Zone) != c.zone):
			t.Errorf("Forwarded(%s) = %v, want zone %s", c.name, z, c.zone)
		case c.zone != "" && c.zone != "100.51.198.in-addr.arpa" && (len(z.To) != 1 || z.To[0].Addr.String() != "10.96.0.10:53"):
			t.Errorf("zone %s forwards to %v, want the cluster DNS 10.96.0.10:53", z.Zone, z.To)
		}
		// Decide never opens them: a PTR name of a pod is forwarded,
		// not allowed by a rule and learned.
		if c.zone != "" {
			if d := p.Decide(Query{Source: netip.MustParseAddr("10.244.1.5"), Name: c.name, AnyPort: true}); d.Reason != ReasonForwarded {
				t.Errorf("Decide(%s) = %v %v, want forwarded", c.name, d.Action, d.Reason)
			}
		}
	}

	_, err = Parse("p.yaml", []byte(`dns: {upstreams: [192.0.2.53], forward: [{reverse: 10.96.0.0/12, to: [198.51.100.53]}]}
kubernetes: {node: n1, cluster_cidrs: [10.244.0.0/16, 10.96.0.0/12], dns: {address: 10.96.0.10}}
sources: {web: {kubernetes: {namespaces: [web]}}}
rules: []
`))
	want := "p.yaml:2:55: kubernetes.cluster_cidrs 10.96.0.0/12: its reverse names are forwarded to kubernetes.dns.address, and dns.forward (p.yaml:1:52) forwards them too"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("a dns.forward item for a cluster range: got %v, want %q", err, want)
	}
}
