package daemon

import (
	"github.com/fqdngate/fqdngate/internal/cluster"
	"github.com/fqdngate/fqdngate/internal/nft"
	"github.com/fqdngate/fqdngate/internal/policy"
)

// CheckHost reports what in p this host cannot provide, positioned in
// p's file like a policy error: today, a state file whose directory does
// not exist, and a fleet gateway's etcd credentials that do not load.
// Run refuses to start on it, and fqdngate check reports it,
// so that the two never disagree.
func CheckHost(p *policy.Policy) error {
	var errs policy.ErrorList
	if p.Firewall.Backend == policy.BackendNftables {
		if err := nft.CheckStateFile(p.Firewall.StateFile); err != nil {
			errs = append(errs, p.ErrorAt(p.Firewall.StateFileAt, "firewall.state_file: "+err.Error()))
		}
	}
	if c := p.Cluster; c != nil {
		// Dial would refuse them at start.
		if err := cluster.CheckCredentials(c); err != nil {
			errs = append(errs, p.ErrorAt(c.At, err.Error()))
		}
	}
	if len(errs) == 0 {
		return nil
	}
	return errs
}
