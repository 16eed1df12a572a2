package review

import (
	"time"

	"github.com/fqdngate/fqdngate/internal/policy"
)

// ObservePassed warns about every observe_until before now: the group is
// enforced already, so the key only misleads a reader. file names the
// file the sources are written in. fqdngate check prints these with or
// without --strict.
func ObservePassed(p *policy.Policy, file string, now time.Time) []Warning {
	var ws []Warning
	for _, o := range p.Observed(now) {
		if o.Observing {
			continue
		}
		at := p.Observe[o.Group].At
		ws = append(ws, Warning{File: file, Line: at.Line, Col: at.Col,
			Msg: "sources." + o.Group + ".observe_until " + o.Written + " has passed (" + o.Until.Format(time.RFC3339) + "), so the group is enforced; remove observe_until, or set a later date to observe it again"})
	}
	return ws
}
