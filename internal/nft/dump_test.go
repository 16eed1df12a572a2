package nft

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/fqdngate/fqdngate/internal/learn"
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
	names := memoryNames(n / 10)
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

// TestAdoptReadsStateFileOnlyWhenNeeded: a backend that adopts a table
// restores nothing from a state file that names no set into the learned
// sets the table kept (the kernel holds whatever of the file is live),
// and restores the file's entries of a learned set its first Apply makes
// anew (here a rule added across the restart).
func TestAdoptReadsStateFileOnlyWhenNeeded(t *testing.T) {
	netns.RequireRoot(t)
	ns := netns.New(t)
	full := mustParse(t, memoryPolicy)
	cut := memoryPolicy[:strings.Index(memoryPolicy, "  - name: db")]
	withoutDB := mustParse(t, cut)
	state := filepath.Join(t.TempDir(), "state.json")
	cfg := Config{Table: "fqdngate", Hook: policy.HookForward, NetNSFd: ns.Fd(), StateFile: state}
	start := func(p *policy.Policy) *Backend {
		b, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Apply(context.Background(), p); err != nil {
			t.Fatal(err)
		}
		return b
	}
	learnedAddrs := func(b *Backend) []string {
		var out []string
		for _, e := range b.Learned() {
			out = append(out, e.Rule+" "+e.Addr.String())
		}
		slices.Sort(out)
		return out
	}
	exp := time.Now().Add(time.Hour)
	first := startBackend(t, ns, Config{Hook: policy.HookForward}, withoutDB)
	if err := first.Publish(context.Background(), []learn.Entry{{Name: "a.web.example", Rule: "web", Group: "office", Addr: netip.MustParseAddr("2001:db8::1"), Expires: exp}}); err != nil {
		t.Fatal(err)
	}
	// The file lists an address the kernel does not hold, and one of a
	// rule the table has no set for yet.
	// A version 1 file, as an older fqdngate wrote it: it names no set,
	// so neither is taken from it.
	v1 := fmt.Sprintf(`{"version":1,"learned":[{"rule":"web","group":"office","addr":"2001:db8::2","expires":%q}
,{"rule":"db","group":"servers","addr":"2001:db8::3","expires":%q}
]}
`, exp.Format(time.RFC3339Nano), exp.Format(time.RFC3339Nano))
	if err := os.WriteFile(state, []byte(v1), 0o600); err != nil {
		t.Fatal(err)
	}

	second := start(withoutDB)
	if got, want := learnedAddrs(second), []string{"web 2001:db8::1"}; !slices.Equal(got, want) {
		t.Errorf("every learned set kept: learned %v, want %v (the kernel's, the state file unread)", got, want)
	}
	second.Close()

	third := start(full)
	defer third.Close()
	if got, want := learnedAddrs(third), []string{"db 2001:db8::3", "web 2001:db8::1"}; !slices.Equal(got, want) {
		t.Errorf("a learned set made anew: learned %v, want %v (the kernel's, and the state file's for the new set)", got, want)
	}
}
