package nft

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/policy/bigpolicy"
	"github.com/fqdngate/fqdngate/internal/testutil/netns"
)

// TestManyRules programs a policy of 4,000 rules, about 25,000 netlink
// messages in one transaction, and then again as a reload does. The
// kernel queues an acknowledgement per message before any is read; with
// the socket's first 8 MiB of receive buffer they overflowed, and the
// policy failed with ENOBUFS.
func TestManyRules(t *testing.T) {
	ns := netns.New(t)
	const n = 4000
	y := strings.Replace(string(bigpolicy.YAML(n)), "dns: {upstreams: [192.0.2.53]}",
		"dns: {upstreams: [192.0.2.53]}\nfirewall: {backend: nftables, hook: forward}\nlisten: {dns: '127.0.0.1:53'}", 1)
	parse := func() *policy.Policy {
		p, err := policy.Parse("many.yaml", []byte(y))
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	be := startBackend(t, ns, Config{Hook: policy.HookForward, StateFile: filepath.Join(t.TempDir(), "state.json")}, nil)
	for _, what := range []string{"start", "reload"} {
		if err := be.Apply(context.Background(), parse()); err != nil {
			t.Fatalf("%s with %d rules: %v", what, n, err)
		}
	}
	// Every rule's learned sets are in the kernel.
	sets := map[string]bool{}
	for _, obj := range nftJSON(t, ns, "fqdngate") {
		if raw, ok := obj["set"]; ok {
			var s struct {
				Name string `json:"name"`
			}
			if err := json.Unmarshal(raw, &s); err != nil {
				t.Fatal(err)
			}
			sets[s.Name] = true
		}
	}
	for _, r := range []string{"r0", "r1999", "r3999"} {
		if !sets[learnedSetName(r, "", v4)] && !sets[learnedSetName(r, "g"+r[1:], v4)] {
			t.Errorf("no learned set of rule %s among the kernel's %d sets", r, len(sets))
		}
	}
}
