// Package bigpolicy generates large policies for the loader's benchmarks
// and tests, so the parser, the loader and the daemon's reload benchmark
// measure the same file.
package bigpolicy

import (
	"fmt"
	"strings"
)

// YAML is a policy of n rules: a third exact names, a third *. wildcards,
// a third **. wildcards, spread over 101 second-level domains; every
// fourth rule is limited to one of 20 source groups and every fifth has
// ports other than the default. It has sources, rules and dns.upstreams,
// and no listen, firewall or log keys, so a caller may add them.
func YAML(n int) []byte {
	var b strings.Builder
	b.WriteString("dns: {upstreams: [192.0.2.53]}\nsources:\n")
	for g := range 20 {
		fmt.Fprintf(&b, "  g%d: [10.%d.0.0/16]\n", g, g)
	}
	b.WriteString("rules:\n")
	for i := range n {
		fmt.Fprintf(&b, "  - name: r%d\n    to: [%q]\n", i, Target(i))
		if i%4 == 0 {
			fmt.Fprintf(&b, "    from: [g%d]\n", i%20)
		}
		if i%5 == 0 {
			b.WriteString("    ports: [80, 443, 8000-8100]\n")
		}
	}
	return []byte(b.String())
}

// Target is rule i's one target.
func Target(i int) string {
	switch i % 3 {
	case 0:
		return fmt.Sprintf("host%d.svc%d.example%d.com", i, i%997, i%101)
	case 1:
		return fmt.Sprintf("*.w%d.example%d.com", i, i%101)
	}
	return fmt.Sprintf("**.d%d.example%d.com", i, i%101)
}
