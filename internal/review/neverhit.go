package review

import (
	"fmt"

	"github.com/fqdngate/fqdngate/internal/history"
	"github.com/fqdngate/fqdngate/internal/policy"
)

// NeverHit warns about every rule of p that allowed nothing in the
// decision history h (read from the file named hfile), positioned at the
// rule in data (the file named file): candidates for pruning. A history
// without decisions says nothing about the rules: one warning says so
// instead.
func NeverHit(p *policy.Policy, file string, data []byte, h history.RuleHits, hfile string) []Warning {
	if h.Decisions == 0 {
		return []Warning{{File: file, Msg: fmt.Sprintf("the history %s holds no decisions, so it cannot tell which rules are used; point --history at a gateway's history file", hfile)}}
	}
	pos := positions(data)
	var ws []Warning
	for i, r := range p.Rules {
		if _, hit := h.Rules[r.Name]; hit {
			continue
		}
		w := Warning{File: file, Msg: fmt.Sprintf("rule %q allowed nothing in the history (%s to %s, %d decisions); if nothing needs it any more, remove it", r.Name, h.FirstDay, h.LastDay, h.Decisions)}
		if n := pos.rule(i).node; n != nil {
			w.Line, w.Col = n.Line, n.Column
		}
		ws = append(ws, w)
	}
	return ws
}
