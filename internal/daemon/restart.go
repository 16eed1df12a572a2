package daemon

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/fqdngate/fqdngate/internal/admin"
	"github.com/fqdngate/fqdngate/internal/policy"
)

// Every policy setting is applied by a reload except these: components
// build them in at start. A reload that changes one is not refused (the
// rest of the policy applies), but each is reported, with the value in
// force and the one the policy asks for, until a restart (or a policy that
// asks for the value in force again).
//
// The rest is applied: mode, sources, users and rules through the policy
// pointer; listen.* by moving listeners; dns.upstreams, dns.timeout and
// dns.max_inflight by a new resolver; log.file by a new audit file;
// firewall.transparent_ports, dns.max_learned_per_name (nftables) and the
// ruleset by the kernel transaction; firewall.state_file by the
// backend's next save; every other dns.* and proxy.* key is
// read from the policy in force on each query or connection.
var restartOnly = []struct {
	key string
	// part says which part of the setting waits for the restart, when
	// the rest of it applies at once.
	part  string
	value func(*policy.Policy) string
	// when, if not nil, reports whether the setting is fixed under the
	// policy in force.
	when func(*policy.Policy) bool
}{
	{key: "dns.cache_size", value: func(p *policy.Policy) string { return strconv.Itoa(p.DNS.CacheSize) }},
	{
		key:   "dns.max_ttl",
		part:  "how long the response cache keeps an answer (answers and learned addresses follow the new value at once)",
		value: func(p *policy.Policy) string { return p.DNS.MaxTTL.String() },
	},
	{
		key:   "dns.max_learned_per_name",
		part:  "the bound of the in-memory learned store (answers follow the new value at once)",
		value: func(p *policy.Policy) string { return strconv.Itoa(p.DNS.MaxLearnedPerName) },
		when:  func(p *policy.Policy) bool { return p.Firewall.Backend == policy.BackendNone },
	},
	{key: "log.format", value: func(p *policy.Policy) string { return p.Log.Format }},
	// The admin listener's token, client CA, certificate and key are
	// read at start.
	{key: "admin", part: "token_file, client_ca, cert_file, key_file (read at start; admin.listen moves on reload)", value: describeAdmin},
	// The history's file is opened and its goroutine started at start.
	{key: "history", value: describeHistory},
	{
		// The kubernetes client and informers are set up at start;
		// cluster_cidrs and dns apply with the policy.
		key:   "kubernetes",
		part:  "how the API server is reached and whose pods are followed (kubeconfig, node, mode); cluster_cidrs and dns apply at once",
		value: describeKube,
	},
	{
		// The etcd client, status key and fleet membership are set up
		// at start.
		key:   "cluster",
		value: func(p *policy.Policy) string { return describeCluster(p.Cluster) },
		when:  func(p *policy.Policy) bool { return p.Cluster != nil },
	},
}

// describeKube writes what of the kubernetes section is fixed at start.
func describeKube(p *policy.Policy) string {
	k := p.Kubernetes
	if k == nil {
		return "none"
	}
	return fmt.Sprintf("kubeconfig=%s node=%s mode=%s", k.Kubeconfig, k.Node, k.Mode)
}

// describeCluster writes the cluster section's settings (never a secret:
// the password stays in its file).
func describeCluster(c *policy.Cluster) string {
	if c == nil {
		return "none"
	}
	return fmt.Sprintf("endpoints=%s tls=%s,%s,%s username=%s password_file=%s prefix=%s node=%s hold=%s hold_timeout=%s on_hold_timeout=%s",
		strings.Join(c.Endpoints, ","), c.CAFile, c.CertFile, c.KeyFile, c.Username, c.PasswordFile, c.Prefix, c.Node, c.Hold, c.HoldTimeout, c.OnHoldTimeout)
}

// restartPending lists the restart-only settings p changes from boot, the
// policy the components were built from.
func restartPending(boot, p *policy.Policy) []admin.Pending {
	out := []admin.Pending{}
	for _, s := range restartOnly {
		if s.when != nil && !s.when(boot) {
			continue
		}
		if was, now := s.value(boot), s.value(p); was != now {
			out = append(out, admin.Pending{Key: s.key, Part: s.part, InForce: was, Policy: now})
		}
	}
	return out
}

// pendingKeys joins the keys of pending for a log line.
func pendingKeys(pending []admin.Pending) string {
	keys := make([]string, len(pending))
	for i, s := range pending {
		keys[i] = s.Key
	}
	return strings.Join(keys, ", ")
}

// checkFixed refuses a policy that changes what no reload can: the
// backend's identity in the kernel.
func checkFixed(boot, p *policy.Policy) error {
	var changed []string
	if boot.Firewall.Backend != p.Firewall.Backend {
		changed = append(changed, "firewall.backend")
	}
	if boot.Firewall.Table != p.Firewall.Table {
		changed = append(changed, "firewall.table")
	}
	if boot.Firewall.Hook != p.Firewall.Hook {
		changed = append(changed, "firewall.hook")
	}
	if len(changed) > 0 {
		return errors.New(strings.Join(changed, ", ") + " cannot change on reload (firewall.backend, firewall.table and firewall.hook are fixed while fqdngate runs); restart fqdngate to change them")
	}
	return nil
}
