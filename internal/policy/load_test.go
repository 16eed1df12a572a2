package policy

import (
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"gopkg.in/yaml.v3"

	"github.com/fqdngate/fqdngate/internal/fastyaml"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata/")

func TestMain(m *testing.M) {
	resolvConf = "testdata/resolv.conf"
	os.Exit(m.Run())
}

// TestTenMistakes loads a policy with ten different mistakes and checks that
// one load reports every one of them, positioned, in file order.
func TestTenMistakes(t *testing.T) {
	_, err := Load("testdata/ten-mistakes.yaml")
	var list ErrorList
	if !errors.As(err, &list) {
		t.Fatalf("Load: got %v (%T), want an ErrorList", err, err)
	}
	if len(list) != 10 {
		t.Errorf("got %d errors, want 10:\n%v", len(list), err)
	}
	for _, e := range list {
		if e.Line == 0 || e.Col == 0 {
			t.Errorf("error without a position: %v", e)
		}
	}
	got := err.Error() + "\n"
	const golden = "testdata/ten-mistakes.golden"
	if *update {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("errors differ from %s (go test -update rewrites it)\ngot:\n%s\nwant:\n%s", golden, got, want)
	}
}

// errorCase is a policy with one mistake: the error must be at line:col and
// its message must contain every one of want (what is wrong, and the fix).
type errorCase struct {
	name      string
	yaml      string
	line, col int
	want      []string
}

// upstreams is a first line that keeps Parse from reading resolv.conf.
const upstreams = "dns: {upstreams: [192.0.2.53]}\n"

// gateway is a first line for a gateway (nftables, hook forward).
const gateway = "firewall: {backend: nftables, hook: forward}\n"

var errorCases = []errorCase{
	{"not yaml", "mode: enforce\nrules: [\n", 2, 1, []string{"not valid YAML"}},
	{"tab indentation", "dns:\n\tcache: true\n", 2, 1, []string{"not valid YAML"}},
	{"not a mapping", "- name: x\n", 1, 1, []string{"the policy must be a mapping"}},
	{"unknown top-level key with suggestion", "rule:\n  - name: x\n", 1, 1, []string{`unknown key "rule"`, `did you mean "rules"?`}},
	{"unknown key without suggestion", "dns:\n  colour: blue\n", 2, 3, []string{`unknown key "colour" in dns`, "valid keys are upstreams, deny_with"}},
	{"unknown rule key", upstreams + "rules:\n  - name: x\n    to: example.com\n    port: 80\n", 5, 5, []string{`unknown key "port" in rule`, `did you mean "ports"?`}},
	{"key twice", "mode: enforce\nmode: audit\n", 2, 1, []string{"mode is set twice", "keep one"}},
	{"merge key", "base: &b {cache: true}\n", 1, 1, []string{`unknown key "base"`}},
	{"merge key in mapping", "dns:\n  <<: {cache: true}\n", 2, 3, []string{"merge keys (<<) are not supported", "write the keys out"}},
	{"list for a scalar", "mode: [enforce]\n", 1, 7, []string{"mode must be a single value"}},
	{"scalar for a mapping", "dns: 192.0.2.53\n", 1, 6, []string{"dns must be a mapping"}},
	{"bad mode", "mode: block\n", 1, 7, []string{`mode must be enforce or audit, not "block"`}},
	{"bad boolean", "dns:\n  cache: maybe\n", 2, 10, []string{`dns.cache must be true or false, not "maybe"`}},
	{"duration without unit", "dns:\n  grace: 600\n", 2, 10, []string{`dns.grace: "600" has no unit`, "write it like 600s or 600m"}},
	{"not a duration", "dns:\n  grace: ten minutes\n", 2, 10, []string{`"ten minutes" is not a duration`, "write it like 30s, 5m or 1h"}},
	{"negative duration", "proxy:\n  idle_timeout: -5m\n", 2, 17, []string{"proxy.idle_timeout must not be negative"}},
	{"integer out of range", "dns:\n  cache_size: 0\n", 2, 15, []string{"dns.cache_size must be a whole number from 1 to 10000000"}},
	{"integer not a number", "proxy:\n  max_conns: lots\n", 2, 14, []string{"proxy.max_conns must be a whole number"}},
	{"negative rate", "dns:\n  rate_limit: -1\n", 2, 15, []string{"dns.rate_limit must be a number of at least 0"}},
	{"negative wildcard budget", "dns:\n  wildcard_budget: -1\n", 2, 20, []string{"dns.wildcard_budget must be a whole number from 0 to 1000000"}},
	{"min_ttl over max_ttl", "dns:\n  min_ttl: 2h\n  max_ttl: 1h\n", 3, 12, []string{"dns.min_ttl (2h0m0s) is longer than dns.max_ttl (1h0m0s)", "lower min_ttl or raise max_ttl"}},
	{"min_ttl over default max_ttl", "dns:\n  min_ttl: 2h\n", 2, 12, []string{"dns.min_ttl (2h0m0s) is longer than dns.max_ttl (1h0m0s)"}},
	{"zero timeout", "dns:\n  timeout: 0s\n", 2, 12, []string{"dns.timeout must be longer than 0s"}},
	{"bad deny_with", "dns:\n  deny_with: servfail\n", 2, 14, []string{"dns.deny_with must be nxdomain, refused or drop"}},
	{"empty qtypes", "dns:\n  qtypes: []\n", 2, 11, []string{"dns.qtypes is empty", "list at least A and AAAA"}},
	{"qtype ANY", "dns:\n  qtypes: [A, ANY]\n", 2, 15, []string{`dns.qtypes: "ANY" is not a record type fqdngate can answer`}},
	{"unknown qtype", "dns:\n  qtypes: [A, AAAAA]\n", 2, 15, []string{`"AAAAA" is not a record type`}},
	{"upstream name", "dns:\n  upstreams: [dns.google]\n", 2, 15, []string{"upstreams are IP addresses", "192.0.2.53:53"}},
	{"upstream doh without address", "dns:\n  upstreams: [\"https://dns.example/dns-query\"]\n", 2, 15, []string{"the resolver's address is missing", "https://dns.example@192.0.2.53/dns-query"}},
	{"upstream plain http", "dns:\n  upstreams: [192.0.2.53, \"http://dns.example@192.0.2.54/dns-query\"]\n", 2, 27, []string{"plain http:// would send queries", "use DNS-over-HTTPS as https://"}},
	{"empty upstreams", "dns:\n  upstreams: []\n", 2, 14, []string{"dns.upstreams is empty", "omit the key to use"}},
	{"listen not ip:port", "listen:\n  dns: localhost:53\n", 2, 8, []string{`listen.dns: "localhost:53" is not an IP:port`, "127.0.0.1:5353"}},
	{"listen without port", "listen:\n  admin: 127.0.0.1\n", 2, 10, []string{"listen.admin", "is not an IP:port"}},
	{"bad backend", "firewall:\n  backend: iptables\n", 2, 12, []string{"firewall.backend must be none or nftables"}},
	{"bad hook", "firewall:\n  hook: input\n", 2, 9, []string{"firewall.hook must be output", "or forward"}},
	{"bad table", "firewall:\n  table: \"my table\"\n", 2, 10, []string{`firewall.table "my table" must be 1 to 32 letters`}},
	{"bad transparent port", "firewall:\n  transparent_ports: [443, 0]\n", 2, 28, []string{`firewall.transparent_ports: "0" is not a port from 1 to 65535`}},
	{"bad firewall deny_with", "firewall:\n  deny_with: refuse\n", 2, 14, []string{`firewall.deny_with must be drop or reject, not "refuse"`}},
	{"bad log_allowed", "firewall:\n  log_allowed: yes\n", 2, 16, []string{`firewall.log_allowed must be off, all or sampled, not "yes"`}},
	{"bad log format", "log:\n  format: xml\n", 2, 11, []string{"log.format must be json or text"}},
	{"sources not a mapping", "sources: [10.0.0.0/8]\n", 1, 10, []string{"sources must map group names to lists of addresses"}},
	{"group defined twice", "sources:\n  office: [10.1.0.0/16]\n  office: [10.2.0.0/16]\n", 3, 3, []string{`source group "office" is defined twice (first at line 2)`, "merge the two lists"}},
	{"bad group name", "sources:\n  \"my office\": [10.1.0.0/16]\n", 2, 3, []string{`source group name "my office" must start with a letter or digit`}},
	{"bad source address", "sources:\n  office: [10.1.0.0/16, 10.2.0.300]\n", 2, 25, []string{`sources.office: "10.2.0.300" is not an IP address or CIDR`}},
	{"source cidr with host bits", "sources:\n  office: [10.1.2.3/16]\n", 2, 12, []string{`"10.1.2.3/16" has bits set past the prefix length; write 10.1.0.0/16`}},
	{"empty group", "sources:\n  office: []\n", 2, 3, []string{`source group "office" has no addresses`}},
	{"long-form group without cidrs", gateway + "sources:\n  office: {interfaces: [eth1]}\n", 3, 3, []string{`source group "office" has no cidrs`, "office: {cidrs: [10.0.0.0/24], interfaces: [eth1]}"}},
	{"long-form group with cidrs misspelt", gateway + "sources:\n  office: {cidr: [10.1.0.0/16]}\n", 3, 12, []string{`unknown key "cidr" in sources.office`, `did you mean "cidrs"?`}},
	{"long-form group with empty cidrs", gateway + "sources:\n  office: {cidrs: []}\n", 3, 3, []string{`source group "office" has no addresses`}},
	{"long-form bad source address", gateway + "sources:\n  office: {cidrs: [10.1.0.0/33]}\n", 3, 20, []string{`sources.office.cidrs: "10.1.0.0/33" is not a CIDR`}},
	{"interface name with a space", gateway + "sources:\n  office: {cidrs: [10.1.0.0/16], interfaces: [eth1, \"my if\"]}\n", 3, 53, []string{`sources.office.interfaces: "my if" holds '/', ':' or white space`}},
	{"interface name too long", gateway + "sources:\n  office: {cidrs: [10.1.0.0/16], interfaces: [abcdefghijklmnop]}\n", 3, 47, []string{`"abcdefghijklmnop" is longer than 15 bytes`}},
	{"interface wildcard", gateway + "sources:\n  office: {cidrs: [10.1.0.0/16], interfaces: [\"eth*\"]}\n", 3, 47, []string{`"eth*" is a wildcard; list each interface by its name`}},
	{"empty interfaces", gateway + "sources:\n  office: {cidrs: [10.1.0.0/16], interfaces: []}\n", 3, 46, []string{"sources.office.interfaces is empty", "remove the key to match on any"}},
	{"interfaces with hook output", "firewall: {backend: nftables}\nsources:\n  office: {cidrs: [10.1.0.0/16], interfaces: [eth1]}\n", 3, 46, []string{"sources.office.interfaces: with firewall.hook: output", "remove interfaces, or use hook: forward"}},
	{"interfaces without nftables", "sources:\n  office: {cidrs: [10.1.0.0/16], interfaces: [eth1]}\n", 2, 46, []string{"sources.office.interfaces needs firewall.backend: nftables", "decide groups by address"}},
	{"bad reverse_path", "firewall:\n  reverse_path: maybe\n", 2, 17, []string{"firewall.reverse_path must be strict", "loose", `or off, not "maybe"`}},
	{"reverse_path without nftables", "firewall:\n  reverse_path: loose\n", 2, 17, []string{"firewall.reverse_path: loose is checked in the kernel and needs firewall.backend: nftables"}},
	{"empty inside", "inside: {}\n", 1, 9, []string{"inside is empty", "inside: {ranges: [10.0.0.0/8]}", "remove it to serve the source groups"}},
	{"null inside", "inside:\n", 1, 8, []string{"inside is empty"}},
	{"inside not a mapping", "inside: [10.0.0.0/8]\n", 1, 9, []string{"inside must be a mapping"}},
	{"unknown inside key", "inside: {ranges: [10.0.0.0/8], ranges6: [\"2001:db8::/32\"]}\n", 1, 32, []string{`unknown key "ranges6" in inside`, `did you mean "ranges"?`}},
	{"empty inside ranges", "inside: {ranges: []}\n", 1, 18, []string{"inside.ranges is empty"}},
	{"empty inside interfaces", gateway + "inside: {interfaces: []}\n", 2, 22, []string{"inside.interfaces is empty"}},
	{"bad inside range", "inside: {ranges: [10.0.0.300]}\n", 1, 19, []string{`inside.ranges: "10.0.0.300" is not an IP address or CIDR`}},
	{"bad inside interface", gateway + "inside: {interfaces: [\"..\"]}\n", 2, 23, []string{`inside.interfaces: ".." is not an interface name`}},
	{"inside interfaces without nftables", "inside: {interfaces: [eth1]}\n", 1, 22, []string{"inside.interfaces needs firewall.backend: nftables", "inside.ranges instead"}},
	{"group outside inside", "sources:\n  office: [10.1.0.0/16]\ninside: {ranges: [10.0.0.0/16, 10.1.0.0/17]}\n", 2, 3, []string{`source group "office": 10.1.0.0/16 is not in inside.ranges`, "add it to inside.ranges"}},
	{"gateway without inside", "firewall: {backend: nftables, hook: forward}\n", 1, 37, []string{"firewall.hook: forward", "names none (no sources, no inside)", "inside: {ranges: [10.0.0.0/8]}", "or define source groups"}},
	{"dns listener without inside", "listen: {dns: 0.0.0.0:53}\n", 1, 15, []string{"listen.dns: 0.0.0.0:53 can be reached from other hosts", "inside: {ranges: [10.0.0.0/8]}", "or listen on 127.0.0.1"}},
	{"proxy listener without inside", "listen: {dns: \"[::1]:53\", proxy: 192.0.2.1:3128}\n", 1, 34, []string{"listen.proxy: 192.0.2.1:3128 can be reached"}},
	{"transparent listener without inside", "listen: {transparent: \"[::]:3129\"}\n", 1, 23, []string{"listen.transparent: [::]:3129 can be reached"}},
	{"users not a mapping", "users: [alice]\n", 1, 8, []string{"users must map user names to {hash, groups}"}},
	{"plain password", "users:\n  alice:\n    hash: hunter2\n", 2, 3, []string{"users.alice.hash is not a bcrypt hash", "htpasswd -nbB"}},
	{"user in undefined group", "sources:\n  ci: [10.2.0.0/16]\nusers:\n  alice:\n    hash: $2a$04$CKxvxTcDqB6cnxi.Chjma.9r/0VfUe5QryqVoh5azytZmaPdIyGwa\n    groups: [cj]\n", 6, 14, []string{`users.alice: source group "cj" is not defined`, `did you mean "ci"?`}},
	{"user defined twice", "users:\n  alice:\n    hash: $2a$04$CKxvxTcDqB6cnxi.Chjma.9r/0VfUe5QryqVoh5azytZmaPdIyGwa\n  alice:\n    hash: $2a$04$CKxvxTcDqB6cnxi.Chjma.9r/0VfUe5QryqVoh5azytZmaPdIyGwa\n", 4, 3, []string{`user "alice" is defined twice (first at line 2); keep one`}},
	{"rule without name", upstreams + "rules:\n  - to: example.com\n", 3, 5, []string{"rule has no name", "name: bank-api"}},
	{"empty rule item", upstreams + "rules:\n  -\n  - name: x\n    to: example.com\n", 3, 4, []string{"rules has an empty item"}},
	{"bad rule name", upstreams + "rules:\n  - name: \"bank api\"\n    to: example.com\n", 3, 11, []string{`rule name "bank api" must start with a letter or digit`}},
	{"duplicate rule name", upstreams + "rules:\n  - name: x\n    to: a.example\n  - name: x\n    to: b.example\n", 5, 11, []string{`rule name "x" is already used at line 3`, "must be unique"}},
	{"empty from", upstreams + "rules:\n  - name: x\n    from: []\n    to: example.com\n", 3, 5, []string{`rule "x": from is empty`, "omit from to apply to every source"}},
	{"undefined group", upstreams + "sources:\n  office: [10.1.0.0/16]\nrules:\n  - name: x\n    from: [ofice]\n    to: example.com\n", 6, 12, []string{`source group "ofice" is not defined under sources`, `did you mean "office"?`}},
	{"undefined group without sources", upstreams + "rules:\n  - name: x\n    from: contractors\n    to: example.com\n", 4, 11, []string{`source group "contractors" is not defined`, "define it, like sources: {contractors: [10.0.0.0/24]}"}},
	{"no targets", upstreams + "rules:\n  - name: x\n", 3, 5, []string{`rule "x" has no targets`, "list names or CIDRs under to"}},
	{"star in the middle", upstreams + "rules:\n  - name: x\n    to: [\"api.*.example.com\"]\n", 4, 10, []string{`'*' may only stand as the whole first label`}},
	{"star inside a label", upstreams + "rules:\n  - name: x\n    to: [\"api-*.example.com\"]\n", 4, 10, []string{`'*' may only stand as the whole first label`}},
	{"empty label", upstreams + "rules:\n  - name: x\n    to: [api..example.com]\n", 4, 10, []string{"empty label", "write a host name like api.example.com"}},
	{"long label", upstreams + "rules:\n  - name: x\n    to: [" + strings.Repeat("a", 64) + ".example.com]\n", 4, 10, []string{"the limit is 63"}},
	{"long name", upstreams + "rules:\n  - name: x\n    to: [" + strings.Repeat("abcdefghi.", 25) + "example.com]\n", 4, 10, []string{"the limit is 253"}},
	{"wildcard without base", upstreams + "rules:\n  - name: x\n    to: [\"*.\"]\n", 4, 10, []string{`"*." is not a valid name pattern`}},
	{"url target", upstreams + "rules:\n  - name: x\n    to: [\"https://api.example.com/v1\"]\n", 4, 10, []string{"is a URL; write the host name only (api.example.com)"}},
	{"host:port target", upstreams + "rules:\n  - name: x\n    to: [\"api.example.com:8443\"]\n", 4, 10, []string{"write the host (api.example.com) under to and the port (8443) under ports"}},
	{"bad cidr", upstreams + "rules:\n  - name: x\n    to: [203.0.113.0/33]\n", 4, 10, []string{`"203.0.113.0/33" is not a CIDR`}},
	{"cidr with host bits", upstreams + "rules:\n  - name: x\n    to: [203.0.113.7/24]\n", 4, 10, []string{"write 203.0.113.0/24"}},
	{"bad ip", upstreams + "rules:\n  - name: x\n    to: [203.0.113.300]\n", 4, 10, []string{`"203.0.113.300" is not an IP address or CIDR`}},
	{"public suffix", upstreams + "rules:\n  - name: x\n    to: [\"*.com\"]\n", 4, 10, []string{`"*.com" opens every tenant of com, a public suffix`, "allow_public_suffix: true"}},
	{"two-label public suffix", upstreams + "rules:\n  - name: x\n    to: [\"**.co.uk\"]\n", 4, 10, []string{"co.uk, a public suffix"}},
	{"squid public suffix", upstreams + "rules:\n  - name: x\n    to: [.com]\n", 4, 10, []string{"a public suffix"}},
	{"shared hosting suffix", upstreams + "rules:\n  - name: x\n    to: [\"**.github.io\"]\n", 4, 10, []string{"github.io, a shared hosting suffix"}},
	{"s3 suffix", upstreams + "rules:\n  - name: x\n    to: [\"*.s3.amazonaws.com\"]\n", 4, 10, []string{"s3.amazonaws.com, a shared hosting suffix"}},
	{"unlisted top-level domain", upstreams + "rules:\n  - name: x\n    to: [\"*.corp\"]\n", 4, 10, []string{"corp, a top-level domain"}},
	{"empty ports", upstreams + "rules:\n  - name: x\n    to: example.com\n    ports: []\n", 3, 5, []string{"ports is empty; omit it for 443/tcp"}},
	{"port out of range", upstreams + "rules:\n  - name: x\n    to: example.com\n    ports: [443, 65536]\n", 5, 18, []string{`port "65536" is out of range; ports run from 1 to 65535`}},
	{"port zero", upstreams + "rules:\n  - name: x\n    to: example.com\n    ports: 0\n", 5, 12, []string{`port "0" is out of range`}},
	{"backwards range", upstreams + "rules:\n  - name: x\n    to: example.com\n    ports: [9000-8000]\n", 5, 13, []string{"runs backwards; write the low port first, like 8000-9000"}},
	{"bad protocol", upstreams + "rules:\n  - name: x\n    to: example.com\n    ports: [443/quic]\n", 5, 13, []string{"protocol must be tcp or udp"}},
	{"service name port", upstreams + "rules:\n  - name: x\n    to: example.com\n    ports: [https]\n", 5, 13, []string{`port "https" is not a port`}},
	{"refresh on wildcard", upstreams + "rules:\n  - name: x\n    to: [\"*.example.com\", 203.0.113.0/24]\n    refresh: 5m\n", 5, 14, []string{"refresh needs at least one exact name", "remove refresh or add a name"}},
	{"refresh too short", upstreams + "rules:\n  - name: x\n    to: example.com\n    refresh: 100ms\n", 5, 14, []string{"refresh 100ms is too short; use 1s or more"}},
	{"refresh bad duration", upstreams + "rules:\n  - name: x\n    to: example.com\n    refresh: 5\n", 5, 14, []string{`refresh: "5" has no unit`}},
	{"bad inspect_tunnels", upstreams + "rules:\n  - name: x\n    to: example.com\n    inspect_tunnels: never\n", 5, 22, []string{`inspect_tunnels must be true or false, not "never"`}},
	{"inspect_tunnels without a TCP port", upstreams + "rules:\n  - name: ntp\n    to: pool.ntp.example\n    ports: [123/udp]\n    inspect_tunnels: false\n", 6, 22, []string{`rule "ntp": inspect_tunnels is about CONNECT tunnels`, "allows no TCP port", "remove inspect_tunnels"}},
	{"bad allow_public_suffix", upstreams + "rules:\n  - name: x\n    to: example.com\n    allow_public_suffix: si\n", 5, 26, []string{"allow_public_suffix must be true or false"}},
	{"bad pin", upstreams + "rules:\n  - name: x\n    to: example.com\n    tls:\n      verify: true\n      pins: [abc]\n", 7, 14, []string{`pin "abc" must look like sha256/`}},
	{"short pin", upstreams + "rules:\n  - name: x\n    to: example.com\n    tls:\n      verify: true\n      pins: [sha256/AAAA]\n", 7, 14, []string{"not 32 bytes of base64", "openssl"}},
	{"pins without verify", upstreams + "rules:\n  - name: x\n    to: example.com\n    tls:\n      pins: [sha256/47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=]\n", 6, 7, []string{"tls.pins are only checked with verify: true; add it"}},
	{"bad min_version", upstreams + "rules:\n  - name: x\n    to: example.com\n    tls:\n      min_version: \"1.1\"\n", 6, 7, []string{`tls.min_version must be 1.2 or 1.3, not "1.1"`}},
	{"missing ca_file", upstreams + "rules:\n  - name: x\n    to: example.com\n    tls:\n      verify: true\n      ca_file: testdata/no-such-ca.pem\n", 6, 7, []string{"tls.ca_file", "no such file"}},
	{"unknown tls key", upstreams + "rules:\n  - name: x\n    to: example.com\n    tls:\n      verfy: true\n", 6, 7, []string{`unknown key "verfy" in tls`, `did you mean "verify"?`}},
	{"alias to a mapping where a list goes", upstreams + "x: &x {a: b}\n", 2, 1, []string{`unknown key "x"`}},
}

func TestParseErrors(t *testing.T) {
	for _, tt := range errorCases {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("p.yaml", []byte(tt.yaml))
			var list ErrorList
			if !errors.As(err, &list) {
				t.Fatalf("Parse: got %v (%T), want an ErrorList", err, err)
			}
			if len(list) != 1 {
				t.Errorf("got %d errors, want 1:\n%v", len(list), err)
			}
			e := list[0]
			if e.File != "p.yaml" || e.Line != tt.line || e.Col != tt.col {
				t.Errorf("error at %s:%d:%d, want p.yaml:%d:%d: %s", e.File, e.Line, e.Col, tt.line, tt.col, e.Msg)
			}
			for _, w := range tt.want {
				if !strings.Contains(e.Msg, w) {
					t.Errorf("message %q does not contain %q", e.Msg, w)
				}
			}
			if wantPrefix := fmt.Sprintf("p.yaml:%d:%d: ", tt.line, tt.col); !strings.HasPrefix(e.Error(), wantPrefix) {
				t.Errorf("Error() = %q, want prefix %q", e.Error(), wantPrefix)
			}
		})
	}
}

func TestParseEmpty(t *testing.T) {
	for _, in := range []string{"", "# only a comment\n", "---\n"} {
		_, err := Parse("p.yaml", []byte(in))
		if err == nil || !strings.Contains(err.Error(), "the policy is empty; start from examples/quickstart.yaml") {
			t.Errorf("Parse(%q) = %v, want the empty-policy error", in, err)
		}
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load("testdata/no-such-policy.yaml")
	if err == nil || !strings.Contains(err.Error(), "reading policy") || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load(missing) = %v, want a wrapped ErrNotExist", err)
	}
}

func TestLoadQuickstart(t *testing.T) {
	p := loadTestPolicy(t, "../../examples/quickstart.yaml")
	if len(p.Rules) != 2 {
		t.Errorf("got %d rules, want 2", len(p.Rules))
	}
	d := p.Decide(Query{Source: netip.MustParseAddr("127.0.0.1"), Name: "www.example.com", Port: 80, Proto: TCP})
	if d.Action != Allow || d.RuleName() != "example" {
		t.Errorf("www.example.com:80 = %v by %q, want allow by example", d.Action, d.RuleName())
	}
}

func TestDefaults(t *testing.T) {
	p, err := Parse("p.yaml", []byte("rules: []\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := defaults("p.yaml")
	// From testdata/resolv.conf; 127.0.0.1:53 stays, as fqdngate listens on :15353.
	want.DNS.Upstreams = []Upstream{{Addr: netip.MustParseAddrPort("192.0.2.1:53")}}
	want.DNS.Upstreams = append(want.DNS.Upstreams, Upstream{Addr: netip.MustParseAddrPort("127.0.0.1:53")})
	want.groupOrder = []string{}
	want.dynOrder = []string{}
	want.idx = p.idx
	if !reflect.DeepEqual(p, want) {
		t.Errorf("Parse(minimal) =\n%+v\nwant defaults\n%+v", p, want)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"mode", p.Mode, Enforce},
		{"listen.dns", p.Listen.DNS, "127.0.0.1:15353"},
		{"listen.proxy", p.Listen.Proxy, "127.0.0.1:3128"},
		{"listen.transparent", p.Listen.Transparent, ""},
		{"listen.admin", p.Listen.Admin, "127.0.0.1:15380"},
		{"dns.deny_with", p.DNS.DenyWith, DenyNXDomain},
		{"dns.qtypes", p.DNS.QTypes, []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeCNAME, dns.TypeHTTPS, dns.TypeSVCB}},
		{"dns.min_ttl", p.DNS.MinTTL, 30 * time.Second},
		{"dns.max_ttl", p.DNS.MaxTTL, time.Hour},
		{"dns.grace", p.DNS.Grace, 10 * time.Minute},
		{"dns.rebinding_protection", p.DNS.RebindingProtection, true},
		{"dns.cache", p.DNS.Cache, true},
		{"dns.cache_size", p.DNS.CacheSize, 100_000},
		{"dns.inspect_cname", p.DNS.InspectCNAME, true},
		{"dns.strip_ech", p.DNS.StripECH, true},
		{"dns.timeout", p.DNS.Timeout, 2 * time.Second},
		{"dns.rate_limit", p.DNS.RateLimit, 1000.0},
		{"dns.rate_burst", p.DNS.RateBurst, 2000},
		{"dns.max_inflight", p.DNS.MaxInFlight, 4096},
		{"dns.max_learned_per_name", p.DNS.MaxLearnedPerName, 1000},
		{"dns.wildcard_budget", p.DNS.WildcardBudget, 300},
		{"firewall.backend", p.Firewall.Backend, BackendNone},
		{"firewall.hook", p.Firewall.Hook, HookOutput},
		{"firewall.table", p.Firewall.Table, "fqdngate"},
		{"firewall.state_file", p.Firewall.StateFile, "/var/lib/fqdngate/state.json"},
		{"firewall.reverse_path", p.Firewall.ReversePath, ReversePathOff},
		{"sources interfaces", p.SourceInterfaces, map[string][]string{}},
		{"inside", p.InsideSpec, Inside{}},
		{"firewall.deny_with", p.Firewall.DenyWith, KernelDrop},
		{"firewall.log_allowed", p.Firewall.LogAllowed, LogAllowedOff},
		{"proxy.deny_private", p.Proxy.DenyPrivate, true},
		{"proxy.connect_timeout", p.Proxy.ConnectTimeout, 10 * time.Second},
		{"proxy.idle_timeout", p.Proxy.IdleTimeout, 5 * time.Minute},
		{"proxy.max_conns", p.Proxy.MaxConns, 10_000},
		{"proxy.allow_no_sni", p.Proxy.AllowNoSNI, false},
		{"log.format", p.Log.Format, "json"},
		{"log.file", p.Log.File, ""},
	}
	for _, c := range checks {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

// TestParseEveryField sets every key to a value other than its default.
func TestParseEveryField(t *testing.T) {
	p := loadTestPolicy(t, "testdata/every-field.yaml")
	checks := []struct {
		name      string
		got, want any
	}{
		{"mode", p.Mode, Audit},
		{"listen.dns", p.Listen.DNS, "0.0.0.0:53"},
		{"listen.proxy", p.Listen.Proxy, ""},
		{"listen.transparent", p.Listen.Transparent, "[::]:3129"},
		{"listen.admin", p.Listen.Admin, "[::1]:9091"},
		{"dns.upstreams", fmt.Sprint(p.DNS.Upstreams), "[192.0.2.53:53 tls://dns.example@192.0.2.54:853 https://doh.example@192.0.2.55:443/dns-query{?dns}]"},
		{"dns.deny_with", p.DNS.DenyWith, DenyRefused},
		{"dns.qtypes", p.DNS.QTypes, []uint16{dns.TypeA, dns.TypeAAAA}},
		{"dns.min_ttl", p.DNS.MinTTL, time.Minute},
		{"dns.max_ttl", p.DNS.MaxTTL, 2 * time.Hour},
		{"dns.grace", p.DNS.Grace, 30 * time.Minute},
		{"dns.rebinding_protection", p.DNS.RebindingProtection, false},
		{"dns.cache", p.DNS.Cache, false},
		{"dns.cache_size", p.DNS.CacheSize, 5000},
		{"dns.inspect_cname", p.DNS.InspectCNAME, false},
		{"dns.strip_ech", p.DNS.StripECH, false},
		{"dns.timeout", p.DNS.Timeout, 3 * time.Second},
		{"dns.rate_limit", p.DNS.RateLimit, 50.5},
		{"dns.rate_burst", p.DNS.RateBurst, 100},
		{"dns.max_inflight", p.DNS.MaxInFlight, 64},
		{"dns.max_learned_per_name", p.DNS.MaxLearnedPerName, 16},
		{"dns.wildcard_budget", p.DNS.WildcardBudget, 50},
		{"firewall.backend", p.Firewall.Backend, BackendNftables},
		{"firewall.hook", p.Firewall.Hook, HookForward},
		{"firewall.table", p.Firewall.Table, "egress_1"},
		{"firewall.transparent_ports", p.Firewall.TransparentPorts, []uint16{80, 443}},
		{"firewall.state_file", p.Firewall.StateFile, "/run/fqdngate/state.json"},
		{"firewall.state_file's position", p.Firewall.StateFileAt, Pos{31, 15}},
		{"an error there", p.ErrorAt(p.Firewall.StateFileAt, "broken").Error(), "testdata/every-field.yaml:31:15: broken"},
		{"firewall.reverse_path", p.Firewall.ReversePath, ReversePathLoose},
		{"firewall.deny_with", p.Firewall.DenyWith, KernelReject},
		{"firewall.log_allowed", p.Firewall.LogAllowed, LogAllowedSampled},
		{"proxy.deny_private", p.Proxy.DenyPrivate, false},
		{"proxy.connect_timeout", p.Proxy.ConnectTimeout, 5 * time.Second},
		{"proxy.idle_timeout", p.Proxy.IdleTimeout, time.Minute},
		{"proxy.max_conns", p.Proxy.MaxConns, 100},
		{"proxy.allow_no_sni", p.Proxy.AllowNoSNI, true},
		{"log.format", p.Log.Format, "text"},
		{"log.file", p.Log.File, "/var/log/fqdngate/audit.log"},
		{"sources", fmt.Sprint(p.Sources), "map[ci:[10.2.0.0/16] office:[10.1.0.0/16 2001:db8:1::/48]]"},
		{"sources interfaces", fmt.Sprint(p.SourceInterfaces), "map[ci:[eth1 eth2]]"},
		{"inside", fmt.Sprintf("%+v", p.InsideSpec), "{Explicit:true Parts:[{Name: Prefixes:[10.0.0.0/8 2001:db8::/32] Interfaces:[eth1 eth2 eth3]}]}"},
		{"users", fmt.Sprint(p.Users["alice"].Groups), "[ci]"},
		{"rules", len(p.Rules), 2},
	}
	for _, c := range checks {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	r := p.Rules[0]
	ruleChecks := []struct {
		name      string
		got, want any
	}{
		{"name", r.Name, "bank-api"},
		{"index", r.Index, 0},
		{"from", r.From, []string{"office", "ci"}},
		{"names", fmt.Sprintf("%v %v %v %v", r.Names[0].Kind, r.Names[0].Base, r.Names[1].Kind, r.Names[1].Base), "exact api.bank.example one-label bank.example"},
		{"prefixes", fmt.Sprint(r.Prefixes), "[203.0.113.0/24 2001:db8:ff::1/128]"},
		{"ports", fmt.Sprint(r.Ports), "[{443 443 tcp} {8443 8443 udp} {9000 9100 tcp}]"},
		{"refresh", r.Refresh, 5 * time.Minute},
		{"tls.verify", r.TLS.Verify, true},
		{"tls.pins", len(r.TLS.Pins), 1},
		{"tls.ca_file", r.TLS.CAFile, "testdata/resolv.conf"},
		{"tls.min_version", r.TLS.MinVersion, uint16(0x0304)},
		{"allow_public_suffix", r.AllowPublicSuffix, false},
		{"inspect_tunnels", r.UninspectedTunnels, true},
		{"second rule inspects tunnels", p.Rules[1].UninspectedTunnels, false},
		{"exact names", fmt.Sprint(r.ExactNames()), "[api.bank.example]"},
		{"any source", r.AnySource(), false},
		{"second rule any source", p.Rules[1].AnySource(), true},
		{"second rule public suffix", p.Rules[1].AllowPublicSuffix, true},
		{"second rule default ports", fmt.Sprint(p.Rules[1].Ports), "[{443 443 tcp}]"},
		{"second rule tls default version", p.Rules[1].TLS, (*TLS)(nil)},
	}
	for _, c := range ruleChecks {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("rule %s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestParseAliases(t *testing.T) {
	src := upstreams + `sources:
  office: &office [10.1.0.0/16]
  ci: *office
rules:
  - name: web
    from: [office]
    to: example.com
    ports: &web [80, 443]
  - name: web2
    to: example.org
    ports: *web
`
	p, err := Parse("p.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(p.Sources["ci"]); got != "[10.1.0.0/16]" {
		t.Errorf("sources.ci = %s, want [10.1.0.0/16]", got)
	}
	if got := fmt.Sprint(p.Rules[1].Ports); got != "[{80 80 tcp} {443 443 tcp}]" {
		t.Errorf("web2 ports = %s, want [{80 80 0} {443 443 0}]", got)
	}
}

// TestParseAliasBomb checks that aliases of aliases cannot make Parse walk
// an exponential number of nodes.
func TestParseAliasBomb(t *testing.T) {
	var b strings.Builder
	b.WriteString("a0: &a0 [10.0.0.0/8, 10.0.0.0/8, 10.0.0.0/8, 10.0.0.0/8, 10.0.0.0/8, 10.0.0.0/8, 10.0.0.0/8, 10.0.0.0/8]\n")
	b.WriteString("sources:\n")
	for i := range 120_000 { // each expansion costs 9; the budget runs out at about 111,000
		fmt.Fprintf(&b, "  g%d: *a0\n", i)
	}
	// The budget's error is the proof that expansion stopped; a hang is
	// the test binary's timeout, not a wall-clock limit here (speed lives
	// in benchmarks, and -race on a loaded machine is slow).
	_, err := Parse("p.yaml", []byte(b.String()))
	if err == nil || !strings.Contains(err.Error(), "YAML aliases expand to too much") {
		t.Errorf("Parse(alias bomb): %v, want the alias error", firstLine(err))
	}
}

func firstLine(err error) string {
	if err == nil {
		return "<nil>"
	}
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}

func TestUpstreamsFromResolvConf(t *testing.T) {
	dir := t.TempDir()
	path := dir + "/resolv.conf"
	tests := []struct {
		name, conf, self, want, wantErr string
	}{
		{"plain", "nameserver 192.0.2.1\nnameserver 2001:db8::1\n", "127.0.0.1:5353", "[192.0.2.1:53 [2001:db8::1]:53]", ""},
		{"skips itself", "nameserver 127.0.0.1\nnameserver 192.0.2.1\n", "127.0.0.1:53", "[192.0.2.1:53]", ""},
		{"wildcard listener skips loopback only", "nameserver 127.0.0.53\nnameserver 192.0.2.1\n", "0.0.0.0:53", "[192.0.2.1:53]", ""},
		{"zone dropped, comments ignored", "# c\nsearch example\nnameserver fe80::1%eth0\n", "", "[[fe80::1]:53]", ""},
		{"only itself", "nameserver 127.0.0.1\n", "127.0.0.1:53", "", "lists no nameserver other than fqdngate itself"},
		{"none", "search example\n", "", "", "lists no nameserver"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := os.WriteFile(path, []byte(tt.conf), 0o644); err != nil {
				t.Fatal(err)
			}
			got, err := upstreamsFromResolvConf(path, tt.self)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %v, %v; want error containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || fmt.Sprint(got) != tt.want {
				t.Errorf("got %v, %v; want %s", got, err, tt.want)
			}
		})
	}
	if _, err := upstreamsFromResolvConf(dir+"/missing", ""); err == nil || !strings.Contains(err.Error(), "cannot be read") {
		t.Errorf("missing file: %v, want 'cannot be read'", err)
	}
}

func TestParseMissingResolvConf(t *testing.T) {
	old := resolvConf
	resolvConf = "testdata/no-such-resolv.conf"
	defer func() { resolvConf = old }()
	_, err := Parse("p.yaml", []byte("rules: []\n"))
	if err == nil || !strings.Contains(err.Error(), "p.yaml: dns.upstreams is not set and testdata/no-such-resolv.conf cannot be read") || !strings.Contains(err.Error(), "list upstreams explicitly") {
		t.Errorf("Parse = %v, want the resolv.conf error", err)
	}
	// With every listener off there is nothing to resolve for.
	if _, err := Parse("p.yaml", []byte("listen: {dns: \"\", proxy: \"\", admin: \"\"}\n")); err != nil {
		t.Errorf("Parse with no listeners: %v", err)
	}
}

func TestErrorListSorted(t *testing.T) {
	_, err := Parse("p.yaml", []byte("log:\n  format: xml\nmode: block\ndns:\n  grace: 5\n"))
	var list ErrorList
	if !errors.As(err, &list) || len(list) != 3 {
		t.Fatalf("got %v, want 3 errors", err)
	}
	for i := 1; i < len(list); i++ {
		if list[i-1].Line > list[i].Line {
			t.Errorf("errors out of order: %v before %v", list[i-1], list[i])
		}
	}
}

// TestDocsExample keeps the complete example in docs/policy.md loadable.
func TestDocsExample(t *testing.T) {
	doc, err := os.ReadFile("../../docs/policy.md")
	if err != nil {
		t.Fatal(err)
	}
	const start = "```yaml\nmode: enforce"
	s := string(doc)
	i := strings.Index(s, start)
	if i < 0 {
		t.Fatalf("docs/policy.md has no example starting %q", start)
	}
	s = s[i+len("```yaml\n"):]
	s, _, _ = strings.Cut(s, "```")
	p, err := Parse("docs/policy.md", []byte(s))
	if err != nil {
		t.Fatalf("the complete example does not load:\n%v", err)
	}
	office := netip.MustParseAddr("10.1.0.7")
	ci := netip.MustParseAddr("10.2.0.9")
	tests := []struct {
		src    netip.Addr
		user   string
		name   string
		port   uint16
		proto  Proto
		want   Action
		reason Reason
	}{
		{office, "", "api.bank.example", 443, TCP, Allow, ReasonMatched},
		{office, "", "api.bank.example", 8443, TCP, Deny, ReasonPort},
		{ci, "", "api.bank.example", 443, TCP, Deny, ReasonSource},
		{netip.MustParseAddr("192.0.2.1"), "deploy-bot", "api.github.com", 443, TCP, Allow, ReasonMatched},
		{netip.MustParseAddr("192.0.2.1"), "", "0.pool.ntp.org", 123, UDP, Allow, ReasonMatched},
		{office, "", "evil.example", 443, TCP, Deny, ReasonNoRule},
	}
	if !p.Inside(ci) || p.Inside(netip.MustParseAddr("192.0.2.1")) {
		t.Errorf("the example's inside is its source groups: Inside(%s) = %v, Inside(192.0.2.1) = %v", ci, p.Inside(ci), p.Inside(netip.MustParseAddr("192.0.2.1")))
	}
	if p.Firewall.ReversePath != ReversePathStrict || p.SourceInterfaces["ci"] == nil {
		t.Errorf("the example's gateway: reverse_path %v, ci's interfaces %v; want strict and [eth2]", p.Firewall.ReversePath, p.SourceInterfaces["ci"])
	}
	for _, tt := range tests {
		d := p.Decide(Query{Source: tt.src, User: tt.user, Name: tt.name, Port: tt.port, Proto: tt.proto})
		if d.Action != tt.want || d.Reason != tt.reason {
			t.Errorf("%s (%s) -> %s:%d/%v = %v (%v), want %v (%v)", tt.src, tt.user, tt.name, tt.port, tt.proto, d.Action, d.Reason, tt.want, tt.reason)
		}
	}
}

func TestNftablesNeedsFixedListenerPorts(t *testing.T) {
	_, err := Parse("p.yaml", []byte(`listen: {dns: "127.0.0.1:0", proxy: "", admin: ""}
dns: {upstreams: [192.0.2.53]}
firewall: {backend: nftables}
rules: [{name: a, to: [a.example]}]
`))
	if err == nil || !strings.Contains(err.Error(), "p.yaml:3:21: with firewall.backend: nftables, listen.dns needs a fixed port") {
		t.Errorf("got %v, want a positioned error about listen.dns port 0", err)
	}
}

// TestFastYAMLSamePolicy compiles policies fastyaml takes, and one it
// does not, both ways: what a policy means must not depend on which
// reader read it. The repository's policies and the generated large one
// must take the fast path, or its speed is nobody's.
func TestFastYAMLSamePolicy(t *testing.T) {
	files, _ := filepath.Glob("testdata/*.yaml")
	examples, _ := filepath.Glob("../../examples/*.yaml")
	inputs := map[string][]byte{"bigpolicy": benchPolicyYAML(2_000)}
	for _, f := range append(files, examples...) {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		inputs[f] = data
	}
	for name, data := range inputs {
		t.Run(name, func(t *testing.T) {
			if _, err := fastyaml.Parse(data, "rules"); err != nil {
				t.Errorf("fastyaml does not take %s: %v", name, err)
			}
			p, err := Parse("f.yaml", data)
			checkSameAsYAMLv3(t, data, p, err)
		})
	}
	// Rules that leave fastyaml's subset part-way (an anchor in the
	// last rule) are read again by yaml.v3 from the start.
	data := append(benchPolicyYAML(2_000), "  - name: anchored\n    to: &t [late.example]\n"...)
	p, err := Parse("f.yaml", data)
	if err != nil || p.Rule("anchored") == nil || len(p.Rules) != 2_001 {
		t.Fatalf("a policy whose last rule has an anchor: %v", err)
	}
	checkSameAsYAMLv3(t, data, p, err)
}

func TestItemsHint(t *testing.T) {
	for _, c := range []struct {
		yaml string
		want int
	}{
		{"rules:\n  - name: a\n    to: [a.example]\n  - name: b\n    to: [b.example]\n", 2},
		{"rules:\n- name: a\n  to: [a.example]\n- {name: b, to: [b.example]}\nsources: {}\n", 2},
		{"dns: {}\nrules:\n\n  # a comment\n  - name: a\n    to:\n      - a.example\n      - b.example\n", 1},
	} {
		var root yaml.Node
		if err := yaml.Unmarshal([]byte(c.yaml), &root); err != nil {
			t.Fatal(err)
		}
		top := root.Content[0]
		var seq *yaml.Node
		for i := 0; i+1 < len(top.Content); i += 2 {
			if top.Content[i].Value == "rules" {
				seq = top.Content[i+1]
			}
		}
		if got := itemsHint([]byte(c.yaml), seq); got != c.want {
			t.Errorf("itemsHint(%q) = %d, want %d", c.yaml, got, c.want)
		}
	}
}
