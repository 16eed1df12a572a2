package nft

import (
	"strings"
	"testing"

	"github.com/fqdngate/fqdngate/internal/policy"
)

const samplePolicy = `
mode: enforce
listen: {dns: 127.0.0.1:5353, admin: ""}
firewall: {backend: nftables, hook: forward, table: fqdngate}
sources:
  payments: [198.51.100.10/32]
rules:
  - name: bank-api
    from: [payments]
    to: [api.bank.example, "*.edge.bank.example"]
    ports: [443, "8000-8100", "443/udp"]
  - name: partner-db
    to: [203.0.113.0/24]
    ports: [5432]
`

func mustParse(t testing.TB, y string) *policy.Policy {
	t.Helper()
	p, err := policy.Parse("test.yaml", []byte(y))
	if err != nil {
		t.Fatalf("parsing policy: %v", err)
	}
	return p
}

// override replaces top-level keys of the policy y with the given lines
// ("mode: audit", "listen: {dns: 0.0.0.0:53}"), adding those it lacks.
func override(y string, lines ...string) string {
	keys := make(map[string]bool, len(lines))
	for _, l := range lines {
		keys[l[:strings.Index(l, ":")+1]] = true
	}
	var out []string
	for _, l := range strings.Split(y, "\n") {
		if i := strings.Index(l, ":"); i > 0 && !strings.HasPrefix(l, " ") && keys[l[:i+1]] {
			continue
		}
		out = append(out, l)
	}
	return strings.Join(lines, "\n") + "\n" + strings.Join(out, "\n")
}
