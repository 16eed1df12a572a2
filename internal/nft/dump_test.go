package nft

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/fqdngate/fqdngate/internal/dnsname"
	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/testutil/netns"
)

// TestAdoptListsEveryElement fills 20,000 learned addresses over six sets
// and has a second backend adopt the table with no state file: it must
// list every one, with its expiry, from the kernel's dumps alone (an
// interrupted dump is dumped again). Each set's own dump lists exactly
// what the first backend holds in it.
func TestAdoptListsEveryElement(t *testing.T) {
	netns.RequireRoot(t)
	ns := netns.New(t)
	p := mustParse(t, memoryPolicy)
	first := startBackend(t, ns, Config{Hook: policy.HookForward}, p)
	const n = 20_000
	names := make([]dnsname.Name, n/10)
	for i := range names {
		names[i] = dnsname.Name(fmt.Sprintf("host%d.%s.example", i, memoryRuleGroups[i%len(memoryRuleGroups)][0]))
	}
	exp := time.Now().Add(time.Hour)
	fillLearned(t, first, names, exp)
	if got := first.Stats().Learned; got != n {
		t.Fatalf("the first backend holds %d, want %d", got, n)
	}

	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: ns.Fd()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	first.memMu.Lock()
	perSet := map[string]int{}
	for k := range first.mirrorAll {
		perSet[k.set()]++
	}
	first.memMu.Unlock()
	for set, want := range perSet {
		elems, interrupted, err := dumpSetElements(c, unix.NFPROTO_INET, "fqdngate", set)
		if err != nil {
			t.Fatal(err)
		}
		if len(elems) != want && !interrupted {
			t.Errorf("a dump of %s listed %d elements, not flagged interrupted; the set holds %d", set, len(elems), want)
		}
		for _, e := range elems {
			if d := e.expires - time.Until(exp); d > 5*time.Second || d < -time.Minute { // Publish rounds up
				t.Fatalf("an element of %s has %v left, want about %v", set, e.expires, time.Until(exp))
			}
		}
	}

	second, err := New(Config{Table: "fqdngate", Hook: policy.HookForward, NetNSFd: ns.Fd()})
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	if got := second.Stats().Learned; got != n {
		t.Errorf("the adopting backend lists %d learned elements, want %d (%d dumps interrupted)", got, n, second.dumpsInterrupted.Load())
	}
	if err := second.Apply(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	if got := second.Stats().Learned; got != n {
		t.Errorf("after its Apply the adopting backend holds %d learned elements, want %d", got, n)
	}
	t.Logf("dumps interrupted at adoption: %d", second.dumpsInterrupted.Load())
}
