package daemon

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/admin"
)

// rulesHits reads /v1/rules from admin: hits by rule name.
func (w *world) rulesHits(addr string) map[string]uint64 {
	w.t.Helper()
	body, err := w.get(addr, "/v1/rules")
	if err != nil {
		w.t.Fatal(err)
	}
	var rep admin.RulesReport
	if err := json.Unmarshal([]byte(body), &rep); err != nil {
		w.t.Fatalf("/v1/rules: %v: %s", err, body)
	}
	out := map[string]uint64{}
	for _, r := range rep.Rules {
		out[r.Name] = r.Hits
		if (r.Hits == 0) != (r.LastHit == nil) {
			w.t.Errorf("/v1/rules: rule %s has %d hits and last_hit %v", r.Name, r.Hits, r.LastHit)
		}
	}
	return out
}

// waitHits waits until rule has want hits at admin: the audit line that
// counts a query is written after its reply.
func (w *world) waitHits(addr, rule string, want uint64) map[string]uint64 {
	w.t.Helper()
	var got map[string]uint64
	for deadline := time.Now().Add(wait); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if got = w.rulesHits(addr); got[rule] == want {
			return got
		}
	}
	w.t.Fatalf("/v1/rules: rule %s has %d hits, want %d (%v)", rule, got[rule], want, got)
	return nil
}

// TestRuleUsageAcrossReload: each answered query is a hit of its rule at
// /v1/rules; a reload that keeps the rule keeps its count, a new rule
// starts at zero.
func TestRuleUsageAcrossReload(t *testing.T) {
	w, d, _ := startV1(t) // resolves old.example over UDP and TCP
	w.waitHits(addrsV1.admin, "old", 2)
	v := w.v1
	v.extra = "  - name: more\n    to: [more.example]\n"
	w.write(v)
	w.reload(d)
	if got := w.rulesHits(addrsV1.admin); got["old"] != 2 || got["more"] != 0 || len(got) != 2 {
		t.Fatalf("after the reload: hits %v, want old 2 (kept), more 0", got)
	}
	w.resolves(outsideDNS, "old.example", old1)
	w.waitHits(addrsV1.admin, "old", 4)
}
