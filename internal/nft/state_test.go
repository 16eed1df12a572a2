package nft

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/dnsname"
	"github.com/fqdngate/fqdngate/internal/learn"
	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/testutil/netns"
)

// runBackend is startBackend for a backend the test stops itself: stop
// ends Run (which writes the state file a last time) and closes it.
func runBackend(t *testing.T, ns *netns.NS, cfg Config, p *policy.Policy) (b *Backend, stop func()) {
	t.Helper()
	cfg.Table, cfg.NetNSFd = "fqdngate", ns.Fd()
	b, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := b.Apply(context.Background(), p); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		b.Close()
	}
	t.Cleanup(stop)
	return b, stop
}

// TestRestartRestoresEveryElement: after a restart, every live learned
// element is in the kernel and in the backend with the expiry it had,
// whether the table survived (adopted) or not (from the state file), and
// the log counts them all. There are more IPv6 elements in one set than
// one netlink message can carry.
func TestRestartRestoresEveryElement(t *testing.T) {
	n := newForwardNet(t)
	p := mustParse(t, override(forwardPolicy, "dns: {max_learned_per_name: 100000}"))
	state := filepath.Join(t.TempDir(), "state.json")
	first, stop := runBackend(t, n.gw, Config{Hook: policy.HookForward, StateFile: state}, p)
	now := time.Now()
	var batch []learn.Entry
	for i := range 2000 {
		a := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 0x10, 14: byte(i >> 8), 15: byte(i)})
		batch = append(batch, learn.Entry{Name: "api.bank.example", Rule: "bank-api", Group: "payments", Addr: a, Expires: now.Add(time.Minute + time.Duration(i)*37*time.Millisecond)})
	}
	for i := range 200 {
		a := netip.AddrFrom4([4]byte{203, 0, 113, byte(i)})
		batch = append(batch, learn.Entry{Name: "www.example", Rule: "web", Group: "others", Addr: a, Expires: now.Add(2*time.Minute + time.Duration(i)*113*time.Millisecond)})
	}
	if err := first.Publish(context.Background(), batch); err != nil {
		t.Fatal(err)
	}
	want := first.Learned()
	if len(want) != len(batch) {
		t.Fatalf("Learned() holds %d entries after publishing %d", len(want), len(batch))
	}
	stop()

	for _, c := range []struct {
		name      string
		breakIt   func()
		logWanted string
	}{
		{"table kept", func() {}, fmt.Sprintf("learned=%d restored=0", len(want))},
		{"table lost", func() { n.gw.MustExec("nft", "delete", "table", "inet", "fqdngate") }, fmt.Sprintf("learned=%d restored=%d", len(want), len(want))},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.breakIt()
			var logs logBuffer
			b, stop := runBackend(t, n.gw, Config{Hook: policy.HookForward, StateFile: state, Logger: logs.logger()}, p)
			defer stop()
			assertKernelHolds(t, n.gw, b, want)
			if !strings.Contains(logs.String(), c.logWanted) {
				t.Errorf("log lacks %s:\n%s", c.logWanted, logs.String())
			}
		})
	}
}

// TestCheckStateFile: the state file must be a file in a directory that
// exists; the error says what to do.
func TestCheckStateFile(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		path string
		want string // "" for no error
	}{
		{"", ""},
		{filepath.Join(dir, "state.json"), ""},
		{file, ""}, // an existing state file
		{filepath.Join(dir, "missing", "state.json"), "does not exist: create it, writable by the user fqdngate runs as"},
		{dir, "is a directory; name a file in it, like " + filepath.Join(dir, "state.json")},
		{filepath.Join(file, "state.json"), "is not a directory"},
	} {
		err := CheckStateFile(c.path)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("CheckStateFile(%q) = %v, want nil", c.path, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("CheckStateFile(%q) = %v, want an error saying %q", c.path, err, c.want)
		}
	}
}

// stateBackend is a backend with learned addresses in memory only, enough
// for the state file: save needs no kernel.
func stateBackend(t *testing.T, path string, logs *logBuffer) *Backend {
	t.Helper()
	b := &Backend{
		cfg:       Config{Table: "fqdngate"},
		log:       logs.logger(),
		now:       time.Now,
		known:     make(map[elemKey]elemState),
		owner:     map[string]learnKey{"learn4.r": {rule: "r", fam: v4}},
		names:     make(map[dnsname.Name]*held),
		statePath: path,
	}
	b.mirrorSet(keyOf("learn4.r", netip.MustParseAddr("192.0.2.1")), wallOf(time.Now().Add(time.Hour)))
	b.dirty = true
	return b
}

// TestStateFileWriteFailure: a state file that cannot be written (its
// directory went) is logged once, not at every attempt, counted at every
// attempt, and logged again when writing works again.
func TestStateFileWriteFailure(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "state.json")
	var logs logBuffer
	b := stateBackend(t, path, &logs)
	b.save()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("first save: %v", err)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		b.dirty = true
		b.save()
	}
	if got := b.Stats().StateWriteFailures; got != 5 {
		t.Errorf("Stats().StateWriteFailures = %d after 5 failed writes, want 5", got)
	}
	if got := strings.Count(logs.String(), "cannot write the state file"); got != 1 {
		t.Errorf("logged the failure %d times, want once:\n%s", got, logs.String())
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	b.save() // still dirty from the failures
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("save after the directory came back: %v", err)
	}
	if got := strings.Count(logs.String(), "state file written again"); got != 1 {
		t.Errorf("logged the recovery %d times, want once:\n%s", got, logs.String())
	}
}

// TestSetStateFile: after SetStateFile, the next save writes the learned
// addresses to the new path, changed or not.
func TestSetStateFile(t *testing.T) {
	dir := t.TempDir()
	var logs logBuffer
	b := stateBackend(t, filepath.Join(dir, "old.json"), &logs)
	b.save()
	b.SetStateFile(filepath.Join(dir, "new.json"))
	b.save()
	st, err := readState(filepath.Join(dir, "new.json"))
	if err != nil || st == nil || len(st.Learned) != 1 || st.Learned[0].Addr().String() != "192.0.2.1" || st.Sets[0].Name != "learn4.r" {
		t.Errorf("new state file holds %+v, %v; want the learned address", st, err)
	}
	if got := b.StateFile(); got != filepath.Join(dir, "new.json") {
		t.Errorf("StateFile() = %q", got)
	}
}
