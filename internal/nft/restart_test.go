package nft

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/learn"
	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/testutil/netns"
)

// TestRestartTakesStateFile: a restart over a surviving table takes its
// learned sets from the state file, without dumping them, and then checks
// every element it took against the kernel. Every element the kernel
// still holds is enforced throughout and known with the kernel's expiry;
// one deleted from the kernel while no fqdngate ran (as one the per-name
// cap evicted just before a crash would be) leaves the mirror once
// checked, and the next answer adds it again; elements that expired in
// the kernel meanwhile are neither known nor held. A state file that is
// not of this table (here: the table was made anew since) is not taken:
// the learned sets are dumped, and nothing of the file is put into them.
func TestRestartTakesStateFile(t *testing.T) {
	netns.RequireRoot(t)
	ns := netns.New(t)
	p := mustParse(t, memoryPolicy)
	state := filepath.Join(t.TempDir(), "state.json")
	cfg := Config{Hook: policy.HookForward, StateFile: state}
	first, stop := runBackend(t, ns, cfg, p)
	const n = 20_000
	names := memoryNames(n / 10)
	fillLearned(t, first, names, time.Now().Add(time.Hour))
	long := first.Learned()
	var short []learn.Entry
	for i := range 100 {
		short = append(short, learn.Entry{Name: "soon.web.example", Rule: "web", Group: "office", Addr: memoryAddr(n + i), Expires: time.Now().Add(time.Second)})
	}
	if err := first.Publish(context.Background(), short); err != nil {
		t.Fatal(err)
	}
	first.memMu.Lock()
	goneSet := first.learned[learnKey{"web", "office", v6}]
	first.memMu.Unlock()
	gone := learn.Entry{Name: "host0.web.example", Rule: "web", Group: "office", Addr: memoryAddr(1), Expires: time.Now().Add(time.Hour)}
	stop() // writes the state file a last time

	ns.MustExec("nft", "delete", "element", "inet", "fqdngate", goneSet, "{ "+gone.Addr.String()+" }")
	time.Sleep(2500 * time.Millisecond) // the short ones expire in the kernel (1 s, and the second of slack)
	var want []learn.Entry
	for _, e := range long {
		if e.Addr != gone.Addr {
			want = append(want, e)
		}
	}

	var logs logBuffer
	cfg2 := cfg
	cfg2.Table, cfg2.NetNSFd, cfg2.Logger = "fqdngate", ns.Fd(), logs.logger()
	second, err := New(cfg2)
	if err != nil {
		t.Fatal(err)
	}
	if second.toVerify != n || second.dumpsInterrupted.Load() != 0 {
		t.Errorf("New took %d elements from the state file, want %d", second.toVerify, n)
	}
	if !strings.Contains(logs.String(), fmt.Sprintf("learned=%d from_state_file=%d", n, n)) {
		t.Errorf("log lacks learned=%d from_state_file=%d:\n%s", n, n, logs.String())
	}
	// Before the check, the mirror trusts the file, deleted element and all.
	if got := second.Stats().Learned; got != n {
		t.Errorf("after New the backend holds %d learned addresses, want %d", got, n)
	}
	if err := second.Apply(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { second.Run(ctx); close(ran) }()
	waitFor(t, "the check of the elements taken from the file", func() bool { return second.verified.Load() == n })
	if got := second.verifyMissing.Load(); got != 1 {
		t.Errorf("the check found %d elements missing, want 1", got)
	}
	assertKernelHolds(t, ns, second, want)
	if held, asked := kernelHolds(t, ns, func(yield func(string, netip.Addr) bool) {
		for _, e := range short {
			if !yield(second.learned[learnKey{e.Rule, e.Group, familyOf(e.Addr)}], e.Addr) {
				return
			}
		}
	}); held != 0 {
		t.Errorf("the kernel holds %d of %d elements that expired while no fqdngate ran", held, asked)
	}
	// The next answer for the deleted one adds it again.
	if err := second.Publish(context.Background(), []learn.Entry{gone}); err != nil {
		t.Fatal(err)
	}
	if held, _ := kernelHolds(t, ns, func(yield func(string, netip.Addr) bool) { yield(goneSet, gone.Addr) }); held != 1 {
		t.Errorf("the kernel lacks %s after an answer learned it again", gone.Addr)
	}
	cancel()
	<-ran
	second.Close()

	t.Run("file of another table", func(t *testing.T) {
		old, err := os.ReadFile(state)
		if err != nil {
			t.Fatal(err)
		}
		ns.MustExec("nft", "delete", "table", "inet", "fqdngate")
		third, stop := runBackend(t, ns, Config{Hook: policy.HookForward}, p)
		other := learn.Entry{Name: "other.web.example", Rule: "web", Group: "office", Addr: netip.MustParseAddr("2001:db8:ffff::1"), Expires: time.Now().Add(time.Hour)}
		if err := third.Publish(context.Background(), []learn.Entry{other}); err != nil {
			t.Fatal(err)
		}
		kept := third.Learned()
		stop()
		if err := os.WriteFile(state, old, 0o600); err != nil {
			t.Fatal(err)
		}
		var logs logBuffer
		fourth, stop := runBackend(t, ns, Config{Hook: policy.HookForward, StateFile: state, Logger: logs.logger()}, p)
		defer stop()
		if fourth.toVerify != 0 {
			t.Errorf("New took %d elements from a state file of another table, want none", fourth.toVerify)
		}
		assertKernelHolds(t, ns, fourth, kept)
	})
}

// TestStateFileTrusted: a state file's sets stand for the kernel's only
// in the same boot, namespace and table, and for a set of the same name
// and handle.
func TestStateFileTrusted(t *testing.T) {
	id := kernelIdent{table: stateIdent{Boot: "b1", NetNS: 7, Handle: 3}, sets: map[string]uint64{"learn4.web": 5, "learn6.web": 6}}
	file := func(table *stateIdent, sets ...stateSet) *state { return &state{Table: table, Sets: sets} }
	same := &stateIdent{Boot: "b1", NetNS: 7, Handle: 3}
	web4 := stateSet{Name: "learn4.web", Handle: 5, Rule: "web"}
	for _, c := range []struct {
		name string
		st   *state
		want []string
	}{
		{"no file", nil, nil},
		{"version 1: no table", file(nil, stateSet{Rule: "web"}), nil},
		{"same table", file(same, web4, stateSet{Name: "learn6.web", Handle: 6, Rule: "web"}), []string{"learn4.web", "learn6.web"}},
		{"another boot", file(&stateIdent{Boot: "b2", NetNS: 7, Handle: 3}, web4), nil},
		{"another namespace", file(&stateIdent{Boot: "b1", NetNS: 8, Handle: 3}, web4), nil},
		{"the table made anew", file(&stateIdent{Boot: "b1", NetNS: 7, Handle: 4}, web4), nil},
		{"a set made anew", file(same, web4, stateSet{Name: "learn6.web", Handle: 2, Rule: "web"}), []string{"learn4.web"}},
		{"a set the table lacks", file(same, stateSet{Name: "learn4.db", Handle: 5, Rule: "db"}), nil},
		{"no handle", file(same, stateSet{Name: "learn4.web", Rule: "web"}), nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := c.st.trusted(&id)
			if len(got) != len(c.want) {
				t.Fatalf("trusted = %v, want %v", got, c.want)
			}
			for _, name := range c.want {
				if _, ok := got[name]; !ok {
					t.Errorf("trusted = %v, want %v", got, c.want)
				}
			}
		})
	}
	if got := file(same, web4).trusted(&kernelIdent{}); got != nil {
		t.Errorf("trusted without the kernel's names = %v, want none", got)
	}
}

// TestStateFileRoundTrip: what writeState writes, readState reads back,
// and a damaged file is refused whole, saying where.
func TestStateFileRoundTrip(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	exp := wallOf(time.UnixMilli(1765120000123))
	in := &state{
		Table: &stateIdent{Boot: "65a6bfed-c44f-4ad3-ad14-cf7d150e30a6", NetNS: 4026531840, Handle: 12},
		Sets:  []stateSet{{Name: "learn4.web.office", Handle: 3, Rule: "web", Group: "office"}, {Name: "learn6.h0123", Handle: 4, Rule: "a \"quoted\" rule"}},
		Learned: []stateEntry{
			entryOf(0, netip.MustParseAddr("192.0.2.1"), exp),
			entryOf(1, netip.MustParseAddr("2001:db8::1"), exp+wall(time.Millisecond)),
		},
	}
	if err := writeState(path, in); err != nil {
		t.Fatal(err)
	}
	out, err := readState(path)
	if err != nil {
		t.Fatal(err)
	}
	if *out.Table != *in.Table || len(out.Sets) != 2 || out.Sets[1] != in.Sets[1] || len(out.Learned) != 2 || out.Learned[1] != in.Learned[1] || out.Learned[0] != in.Learned[0] {
		t.Errorf("read back %+v, want %+v", out, in)
	}
	data, _ := os.ReadFile(path)
	for _, c := range []struct{ name, data, want string }{
		{"empty", "", "line 1 does not end the header"},
		{"version 3", `{"version":3}` + "\n", "version 3, want 2 or 1"},
		{"cut short", strings.Join(strings.Split(string(data), "\n")[:2], "\n") + "\n", "line 3: the file ends before its last line"},
		{"no such set", strings.Replace(string(data), "[1,", "[2,", 1), "line 3: no such set"},
		{"bad address", strings.Replace(string(data), "192.0.2.1", "192.0.2.300", 1), "line 2: a bad address"},
		{"bad expiry", strings.Replace(string(data), "1765120000123", "-1", 1), "line 2: a bad expiry"},
		{"trailing", string(data) + "x", "more after the last line"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := decodeState(bufio.NewReader(strings.NewReader(c.data)))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("decodeState = %v, want an error saying %q", err, c.want)
			}
		})
	}
}

// FuzzDecodeState: no state file, however damaged, crashes or hangs the
// reader, and what it accepts names only sets it lists.
func FuzzDecodeState(f *testing.F) {
	f.Add("{\"version\":2,\"table\":{\"boot\":\"b\",\"netns\":1,\"handle\":2},\"sets\":[{\"name\":\"learn4.r\",\"handle\":3,\"rule\":\"r\"}],\"learned\":[\n[0,\"192.0.2.1\",1765120000000]\n]}\n")
	f.Add("{\"version\":1,\"learned\":[{\"rule\":\"r\",\"addr\":\"192.0.2.1\",\"expires\":\"2026-12-07T15:00:00Z\"}\n]}\n")
	f.Add("{\"version\":2,\"sets\":[],\"learned\":[\n]}\n")
	f.Fuzz(func(t *testing.T, data string) {
		st, err := decodeState(bufio.NewReader(strings.NewReader(data)))
		if err != nil || st == nil {
			return
		}
		for _, e := range st.Learned {
			if int(e.set) >= len(st.Sets) || e.set < 0 || e.Addr().Zone() != "" {
				t.Fatalf("accepted an entry %+v with %d sets", e, len(st.Sets))
			}
		}
	})
}
