package review

import (
	"fmt"

	"github.com/fqdngate/fqdngate/internal/policy"
)

// nftablesPairs is how many rule and source group pairs the nftables
// backend programs in a few seconds. Each pair has sets and rules of its
// own in the kernel, and the one transaction that programs them takes
// longer than in proportion: 1,000 rules 0.5 s at start, 4,000 rules
// 4.5 s, 8,000 rules 15 s; and about 40,000 do not fit the transaction's
// acknowledgements in the largest receive buffer fqdngate asks for
// (BENCHMARKS.md, issue 16; internal/nft fitAcks).
const nftablesPairs = 4000

// NftablesScale warns when p would have the nftables backend program more
// rule and source group pairs than it does in reasonable time: start and
// every reload would hold the firewall's transaction for many seconds,
// or fail. file names the policy's file. fqdngate check prints it with or
// without --strict.
func NftablesScale(p *policy.Policy, file string) []Warning {
	if p.Firewall.Backend != policy.BackendNftables {
		return nil
	}
	pairs := 0
	for _, r := range p.Rules {
		pairs += max(1, len(r.From))
	}
	if pairs <= nftablesPairs {
		return nil
	}
	return []Warning{{File: file, Msg: fmt.Sprintf("firewall.backend nftables with %d rules (%d rule and source group pairs, each with sets and rules of its own in the kernel): starting and every reload program them in one transaction that takes many seconds past %d pairs (15 s at 8,000) and fails past about 40,000; merge rules that share sources and ports (a rule takes many names), or enforce with the proxy alone (backend: none)", len(p.Rules), pairs, nftablesPairs)}}
}
