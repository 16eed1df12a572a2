// Command genpolicy writes bench/reload's policy: bigpolicy's rules with
// the listeners and log settings a daemon needs.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"

	"github.com/fqdngate/fqdngate/internal/policy/bigpolicy"
)

func main() {
	rules := flag.Int("rules", 100_000, "how many rules")
	dns := flag.String("dns", "127.0.0.1:25353", "listen.dns")
	admin := flag.String("admin", "127.0.0.1:25380", "listen.admin")
	proxy := flag.String("proxy", "127.0.0.1:23128", "listen.proxy")
	upstream := flag.String("upstream", "127.0.0.1:25300", "dns.upstreams")
	flag.Parse()
	fmt.Printf("listen: {dns: %q, proxy: %q, admin: %q}\nfirewall: {backend: none}\nlog: {format: json}\nhistory: {enabled: false}\n", *dns, *proxy, *admin)
	// The timed client asks 1,000 names under one wildcard as fast as it
	// is answered: lift the per-client bounds, as bench/dns does.
	dnsLine := fmt.Sprintf("dns: {upstreams: [%s], rate_limit: 0, wildcard_budget: 1000000}", *upstream)
	os.Stdout.Write(bytes.Replace(bigpolicy.YAML(*rules), []byte("dns: {upstreams: [192.0.2.53]}"), []byte(dnsLine), 1))
	// The names bench/dns/upstream answers, for the answers timed during
	// reloads.
	fmt.Print("  - name: bench\n    to: [\"**.bench.example\"]\n")
}
