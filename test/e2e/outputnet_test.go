package e2e

import (
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/testutil/netns"
)

// outputHost is the output topology with fqdngate running: the host
// namespace, where fqdngate and its client share 192.0.2.129 and
// 2001:db8:e::1, and the internet namespace, its router.
type outputHost struct {
	host *netns.NS
	inet *internet
	gate *gate
}

// startOutput builds the output topology and starts fqdngate on the host
// with rules and the settings edit changes (if not nil).
func startOutput(t *testing.T, rules string, edit func(*policySettings)) *outputHost {
	t.Helper()
	o := &outputHost{host: netns.New(t)}
	o.inet = newInternet(t, o.host, "h0")
	o.host.Route("default", inet4)
	o.host.Route("default", inet6)
	o.gate = newGate(t, o.host)
	settings := policySettings{
		hook:      "output",
		dnsListen: "127.0.0.1:53",
		grace:     2 * time.Second,
		table:     o.gate.table,
		stateFile: o.gate.stateFile(),
	}
	if edit != nil {
		edit(&settings)
	}
	o.gate.writePolicy(settings.render(rules))
	o.gate.start()
	return o
}
