package nft

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash/crc32"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/learn"
	"github.com/fqdngate/fqdngate/internal/policy"
)

// fileView is what the state file at path says, with its journal or
// without: by set name and address, the expiry in Unix ms.
func fileView(t *testing.T, path string, withJournal bool) map[string]int64 {
	t.Helper()
	st, err := readState(path)
	if err != nil || st == nil {
		t.Fatalf("readState = %v, %v", st, err)
	}
	if withJournal {
		if _, err := readJournal(path, st); err != nil {
			t.Fatalf("readJournal: %v", err)
		}
	}
	out := make(map[string]int64, len(st.Learned))
	for _, e := range st.Learned {
		out[st.Sets[e.set].Name+" "+e.Addr().String()] = int64(e.Expires) / 1e6
	}
	return out
}

// mirrorView is what the mirror holds, as fileView says it.
func mirrorView(b *Backend) map[string]int64 {
	b.memMu.Lock()
	defer b.memMu.Unlock()
	out := make(map[string]int64)
	for k, exp := range b.mirrorAll {
		out[k.set()+" "+k.addr().String()] = int64(exp) / 1e6
	}
	return out
}

func sameView(t *testing.T, what string, got, want map[string]int64) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: %d entries, want %d", what, len(got), len(want))
	}
	for k, w := range want {
		if g, ok := got[k]; !ok || g != w {
			t.Errorf("%s: %s expires at %d (held: %v), want %d", what, k, g, ok, w)
		}
	}
}

// snapshotID is the journal id the state file at path names.
func snapshotID(t *testing.T, path string) string {
	t.Helper()
	st, err := readState(path)
	if err != nil || st == nil {
		t.Fatalf("readState = %v, %v", st, err)
	}
	return st.Journal
}

// mutate applies f to b's mirror as a transaction would, for save.
func mutate(b *Backend, f func()) {
	b.memMu.Lock()
	defer b.memMu.Unlock()
	f()
	b.dirty = true
}

// TestJournal: after the first save (a snapshot), a save appends what
// changed (an element programmed, one extended, one removed) to the
// journal without rewriting the snapshot, and the snapshot with its
// journal reads back as the mirror.
func TestJournal(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	var logs logBuffer
	b := stateBackend(t, path, &logs)
	a1, a2 := keyOf("learn4.r", netip.MustParseAddr("192.0.2.1")), keyOf("learn4.r", netip.MustParseAddr("192.0.2.2"))
	b.save()
	id := snapshotID(t, path)
	if id == "" {
		t.Fatal("the snapshot names no journal")
	}
	first := mirrorView(b)
	later := wallOf(time.Now().Add(2 * time.Hour))
	mutate(b, func() { b.mirrorSet(a2, later) })
	b.save()
	mutate(b, func() { b.mirrorSet(a1, later+wall(time.Second)) })
	b.save()
	mutate(b, func() { b.mirrorDel(a2) })
	mutate(b, func() { b.mirrorSet(keyOf("learn4.r", netip.MustParseAddr("192.0.2.3")), later) })
	b.save()
	if got := snapshotID(t, path); got != id {
		t.Errorf("the snapshot was written again (journal %s, was %s): a few changes should only append", got, id)
	}
	sameView(t, "the snapshot alone", fileView(t, path, false), first)
	sameView(t, "the snapshot and its journal", fileView(t, path, true), mirrorView(b))
	if b.jw.records != 4 {
		t.Errorf("the journal holds %d records, want 4", b.jw.records)
	}

	// A clean stop's last save appends too; the journal is closed after it.
	b.jw.close()
	mutate(b, func() { b.mirrorSet(a1, later+wall(2*time.Second)) })
	b.save()
	if got := snapshotID(t, path); got == id {
		t.Error("a save after the journal was closed did not write a snapshot")
	}
	sameView(t, "the new snapshot", fileView(t, path, false), mirrorView(b))
	if fi, err := os.Stat(journalPath(path)); err != nil || fi.Size() != int64(journalHdrLen) {
		t.Errorf("the new journal: %v, %v; want a header alone", fi, err)
	}
}

// TestJournalCompaction: once the journal holds more records than
// journalBound allows for its snapshot, the next save writes a new
// snapshot and an empty journal, which say what the mirror says; a
// change of the sets (an Apply) or of the path also starts a snapshot.
func TestJournalCompaction(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	var logs logBuffer
	b := stateBackend(t, path, &logs)
	b.save()
	id := snapshotID(t, path)
	exp := wallOf(time.Now().Add(time.Hour))
	const perSave = 30_000
	for round := range 3 {
		mutate(b, func() {
			for i := range perSave {
				j := round*perSave + i
				b.mirrorSet(keyOf("learn4.r", netip.AddrFrom4([4]byte{10, byte(j >> 16), byte(j >> 8), byte(j)})), exp+wall(j)*1e6)
			}
		})
		b.save()
		got := snapshotID(t, path)
		if wantNew := (round+1)*perSave > journalBound(1); (got != id) != wantNew {
			t.Errorf("round %d: snapshot written %v, want %v (journal of %d records)", round, got != id, wantNew, (round+1)*perSave)
		}
		sameView(t, fmt.Sprintf("round %d", round), fileView(t, path, true), mirrorView(b))
	}
	if b.jw.records != 0 {
		t.Errorf("after the compaction the journal holds %d records, want 0", b.jw.records)
	}
	if st, _ := readState(path); len(st.Learned) != 3*perSave+1 {
		t.Errorf("the new snapshot holds %d entries, want %d", len(st.Learned), 3*perSave+1)
	}

	id = snapshotID(t, path)
	mutate(b, func() { b.journaling = false }) // as commitLocked does
	b.save()
	if snapshotID(t, path) == id {
		t.Error("a save after an Apply did not write a snapshot")
	}
}

// journalBytes encodes a journal of id with the given batches.
func journalBytes(id string, batches ...[]journalEntry) []byte {
	out := []byte(journalMagic)
	out = binary.LittleEndian.AppendUint32(out, journalVersion)
	raw, _ := hex.DecodeString(id)
	out = append(out, raw...)
	for _, recs := range batches {
		var body []byte
		for _, r := range recs {
			body = binary.LittleEndian.AppendUint32(body, uint32(r.set))
			body = append(body, r.a[:]...)
			body = binary.LittleEndian.AppendUint64(body, uint64(int64(r.exp)/1e6))
		}
		out = binary.LittleEndian.AppendUint32(out, uint32(len(recs)))
		out = binary.LittleEndian.AppendUint32(out, crc32.Checksum(body, crc32c))
		out = append(out, body...)
	}
	return out
}

const testJournalID = "00112233445566778899aabbccddeeff"

func testJournalEntry(set int32, a string, ms int64) journalEntry {
	return journalEntry{set: set, a: netip.MustParseAddr(a).As16(), exp: wall(ms * 1e6)}
}

// TestDecodeJournal: a torn last batch (cut short, unchecked, or zeros)
// is left out and the rest applies; any other fault rejects the whole
// journal, saying where; a journal of another snapshot is told apart.
func TestDecodeJournal(t *testing.T) {
	b1 := []journalEntry{testJournalEntry(0, "192.0.2.1", 1765120000000), testJournalEntry(1, "2001:db8::1", 0)}
	b2 := []journalEntry{testJournalEntry(1, "2001:db8::2", 1765120001000)}
	good := journalBytes(testJournalID, b1, b2)
	flip := func(data []byte, off int) []byte {
		out := append([]byte(nil), data...)
		out[off] ^= 1
		return out
	}
	secondBatch := journalHdrLen + journalBatchHd + 2*journalRecLen
	for _, c := range []struct {
		name string
		data []byte
		want int    // records, if no error
		err  string // "" for none
	}{
		{"whole", good, 3, ""},
		{"header alone", good[:journalHdrLen], 0, ""},
		{"last batch cut short", good[:len(good)-5], 2, ""},
		{"last batch header cut short", good[:secondBatch+3], 2, ""},
		{"zeros after the last batch", append(append([]byte(nil), good...), make([]byte, 100)...), 3, ""},
		{"zeros in place of the last batch", append(append([]byte(nil), good[:secondBatch]...), make([]byte, 36)...), 2, ""},
		{"last batch unchecked", flip(good, len(good)-1), 2, ""},
		{"a batch unchecked before another", flip(good, secondBatch-1), 0, "fails its checksum, with more after it"},
		{"another snapshot", journalBytes("ffeeddccbbaa99887766554433221100", b1), 0, errJournalOther.Error()},
		{"no header", good[:10], 0, "not a journal"},
		{"version 2", func() []byte {
			d := append([]byte(nil), good...)
			binary.LittleEndian.PutUint32(d[len(journalMagic):], 2)
			return d
		}(), 0, "version 2, want 1"},
		{"no such set", journalBytes(testJournalID, []journalEntry{testJournalEntry(2, "192.0.2.1", 1)}), 0, "set 2, but the snapshot lists 2"},
		{"negative expiry", journalBytes(testJournalID, []journalEntry{{set: 0, exp: -1e6}}), 0, "a bad expiry"},
		{"far expiry", journalBytes(testJournalID, []journalEntry{{set: 0, exp: math.MaxInt64}}), 0, "a bad expiry"},
	} {
		t.Run(c.name, func(t *testing.T) {
			recs, err := decodeJournal(c.data, testJournalID, 2)
			switch {
			case c.err == "" && err != nil:
				t.Errorf("decodeJournal = %v, want %d records", err, c.want)
			case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
				t.Errorf("decodeJournal = %d records, %v; want an error saying %q", len(recs), err, c.err)
			case c.err == "" && len(recs) != c.want:
				t.Errorf("decodeJournal = %d records, want %d", len(recs), c.want)
			}
		})
	}
}

// TestApplyJournal: records apply in order; the last one of an element
// wins, and a removal removes.
func TestApplyJournal(t *testing.T) {
	a, b, c := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("2001:db8::3")
	st := &state{Sets: []stateSet{{Name: "learn4.r"}, {Name: "learn6.r"}}, Learned: []stateEntry{
		entryOf(0, a, wall(1000*1e6)),
		entryOf(0, b, wall(1000*1e6)),
	}}
	recs := []journalEntry{
		testJournalEntry(0, "192.0.2.1", 2000), // extended
		testJournalEntry(0, "192.0.2.2", 0),    // removed
		testJournalEntry(1, "2001:db8::3", 3000),
		testJournalEntry(1, "2001:db8::3", 0), // added, then removed
		testJournalEntry(1, "2001:db8::3", 4000),
		testJournalEntry(0, "192.0.2.1", 2500),
		testJournalEntry(0, "192.0.2.9", 5000),
		testJournalEntry(0, "192.0.2.9", 0),
	}
	for i := range recs {
		recs[i].seq = int32(i) // as decodeJournal numbers them
	}
	st.applyJournal(recs)
	want := []stateEntry{entryOf(0, a, wall(2500*1e6)), entryOf(1, c, wall(4000*1e6))}
	if !slices.Equal(st.Learned, want) {
		t.Errorf("applied: %+v, want %+v", st.Learned, want)
	}
}

// FuzzDecodeJournal: no journal, however damaged, crashes the reader,
// and what it accepts names only the snapshot's sets, with expiries the
// file can say.
func FuzzDecodeJournal(f *testing.F) {
	good := journalBytes(testJournalID,
		[]journalEntry{testJournalEntry(0, "192.0.2.1", 1765120000000), testJournalEntry(1, "2001:db8::1", 0)},
		[]journalEntry{testJournalEntry(1, "2001:db8::2", 1765120001000)})
	f.Add(good)
	f.Add(good[:len(good)-5])
	f.Add(good[:journalHdrLen])
	f.Add(append(append([]byte(nil), good...), 0, 0, 0, 0, 0))
	f.Fuzz(func(t *testing.T, data []byte) {
		recs, err := decodeJournal(data, testJournalID, 2)
		if err != nil {
			return
		}
		for _, r := range recs {
			if r.set < 0 || r.set >= 2 || r.exp < 0 || r.exp > wall(1<<43)*1e6 {
				t.Fatalf("accepted a record %+v", r)
			}
		}
		st := &state{Sets: make([]stateSet, 2), Learned: []stateEntry{
			entryOf(0, netip.MustParseAddr("192.0.2.1"), wall(1765120000000*1e6)),
			entryOf(1, netip.MustParseAddr("2001:db8::2"), wall(1765120000000*1e6)),
		}}
		st.applyJournal(recs)
		seen := make(map[stateEntry]bool)
		for _, e := range st.Learned {
			if e.Expires <= 0 {
				t.Fatalf("applied a removal as an entry: %+v", e)
			}
			k := e
			k.Expires = 0
			if seen[k] {
				t.Fatalf("an element twice: %+v", st.Learned)
			}
			seen[k] = true
		}
	})
}

// TestRestartReadsJournal: changes that reached only the journal (an
// element programmed, one extended, one the per-name cap removed from
// the kernel) are what a restart over the surviving table takes from
// the file, before it checks anything against the kernel; a journal of
// another snapshot is ignored, and the snapshot taken as it is.
func TestRestartReadsJournal(t *testing.T) {
	n := newForwardNet(t)
	p := mustParse(t, override(forwardPolicy, "dns: {max_learned_per_name: 3}"))
	state := filepath.Join(t.TempDir(), "state.json")
	cfg := Config{Hook: policy.HookForward, StateFile: state}
	first, stop := runBackend(t, n.gw, cfg, p)
	now := time.Now()
	entry := func(i int, exp time.Time) learn.Entry {
		return learn.Entry{Name: "www.example", Rule: "web", Group: "others", Addr: netip.AddrFrom4([4]byte{203, 0, 113, byte(i)}), Expires: exp}
	}
	var batch []learn.Entry
	for i := range 3 {
		batch = append(batch, entry(i+1, now.Add(time.Hour+time.Duration(i)*time.Minute)))
	}
	if err := first.Publish(context.Background(), batch); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the first snapshot", func() bool {
		st, err := readState(state)
		return err == nil && st != nil && len(st.Learned) == 3
	})
	snap := fileView(t, state, false)
	id := snapshotID(t, state)
	// Extended: the third; programmed: a fourth, which pushes the first
	// (the soonest to expire) out of the kernel.
	if err := first.Publish(context.Background(), []learn.Entry{entry(3, now.Add(3*time.Hour)), entry(4, now.Add(2*time.Hour))}); err != nil {
		t.Fatal(err)
	}
	if first.Stats().CapEvictions != 1 {
		t.Fatalf("CapEvictions = %d, want 1", first.Stats().CapEvictions)
	}
	want := first.Learned()
	mirror := mirrorView(first)
	stop() // a last save: an append

	if got := snapshotID(t, state); got != id {
		t.Fatalf("the snapshot was written again; the test needs the changes in the journal only")
	}
	sameView(t, "the snapshot alone", fileView(t, state, false), snap)
	sameView(t, "the snapshot and its journal", fileView(t, state, true), mirror)

	restart := func(t *testing.T) (*Backend, string) {
		var logs logBuffer
		c := cfg
		c.Table, c.NetNSFd, c.Logger = "fqdngate", n.gw.Fd(), logs.logger()
		b, err := New(c)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		if err := b.Apply(context.Background(), p); err != nil {
			t.Fatal(err)
		}
		return b, logs.String()
	}
	t.Run("journal", func(t *testing.T) {
		second, logs := restart(t)
		if second.toVerify != len(want) {
			t.Errorf("New took %d elements from the state file, want %d", second.toVerify, len(want))
		}
		// Before any check against the kernel: what the file said.
		sameView(t, "the mirror after the restart", mirrorView(second), mirror)
		assertKernelHolds(t, n.gw, second, want)
		if !strings.Contains(logs, "read the state file's journal") {
			t.Errorf("log lacks the journal:\n%s", logs)
		}
	})
	t.Run("torn journal", func(t *testing.T) {
		// The changes went in one append; a crash during it leaves the
		// batch cut short, and the restart takes the snapshot alone.
		data, err := os.ReadFile(journalPath(state))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(journalPath(state), data[:len(data)-5], 0o600); err != nil {
			t.Fatal(err)
		}
		defer os.WriteFile(journalPath(state), data, 0o600)
		torn, logs := restart(t)
		sameView(t, "the mirror after the restart", mirrorView(torn), snap)
		if strings.Contains(logs, "ignoring the state file's journal") {
			t.Errorf("a torn last batch was reported as a damaged journal:\n%s", logs)
		}
	})
	t.Run("journal of another snapshot", func(t *testing.T) {
		data, err := os.ReadFile(journalPath(state))
		if err != nil {
			t.Fatal(err)
		}
		copy(data[len(journalMagic)+4:], "another snapshot")
		if err := os.WriteFile(journalPath(state), data, 0o600); err != nil {
			t.Fatal(err)
		}
		third, logs := restart(t)
		sameView(t, "the mirror after the restart", mirrorView(third), snap)
		if !strings.Contains(logs, "it is of an older or newer state file") {
			t.Errorf("log lacks the ignored journal:\n%s", logs)
		}
	})
	t.Run("a damaged journal", func(t *testing.T) {
		if err := os.WriteFile(journalPath(state), []byte("not a journal at all, and longer than a header"), 0o600); err != nil {
			t.Fatal(err)
		}
		fourth, logs := restart(t)
		sameView(t, "the mirror after the restart", mirrorView(fourth), snap)
		if !strings.Contains(logs, "ignoring the state file's journal: the state file is taken as it is") {
			t.Errorf("log lacks the rejected journal:\n%s", logs)
		}
	})
}

// BenchmarkReadJournal decodes and applies a journal of N records (each
// address of the snapshot extended once: the most a journal of a
// snapshot of N entries holds) to that snapshot, from memory: what a
// restart over a full journal adds to reading the snapshot.
func BenchmarkReadJournal(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		b.Run(fmt.Sprintf("N=%d", n), func(b *testing.B) {
			learned := make([]stateEntry, n)
			recs := make([]journalEntry, n)
			for i := range n {
				learned[i] = entryOf(int32(i%12), memoryAddr(i), wall(1765120000000*1e6))
				recs[i] = journalEntry{set: int32(i % 12), a: memoryAddr(i).As16(), exp: wall((1765120000000 + int64(i)) * 1e6)}
			}
			data := journalBytes(testJournalID, recs)
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				st := &state{Sets: make([]stateSet, 12), Learned: slices.Clone(learned)}
				got, err := decodeJournal(data, testJournalID, 12)
				if err != nil || len(got) != n {
					b.Fatal(len(got), err)
				}
				st.applyJournal(got)
			}
		})
	}
}
