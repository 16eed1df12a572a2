package nft

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"time"
)

// The state file lists the learned addresses the kernel holds, for the
// next start. It is JSON, one learned address a line after a first line
// that says where they were:
//
//	{"version":2,"table":{"boot":"…","netns":4026531840,"handle":12},"sets":[{"name":"learn4.web","handle":3,"rule":"web"}],"learned":[
//	[0,"192.0.2.1",1765120000000],
//	[0,"192.0.2.7",1765120004000]
//	]}
//
// An entry is the index of its set in "sets", the address and its expiry
// in Unix milliseconds. "table" names the kernel objects the entries were
// in: the boot (boot_id), the network namespace (its inode), the table's
// handle and, in "sets", each set's. Handles grow with each table or set
// the kernel makes, so a set with the same name and handle in the same
// boot and namespace is the very set the file was written from: at a
// restart its elements are taken from the file, not dumped from the
// kernel (see Backend.adopt). Version 1 files (a JSON object per entry,
// with rule and group) are still read, as a file that names no set.
//
// The file is a snapshot: the changes since it was written are appended
// to its journal (journal.go), which "journal" in the first line names.

// stateVersion is the version written.
const stateVersion = 2

// stateIdent names the table a state file was written from; see above.
type stateIdent struct {
	Boot   string `json:"boot"`
	NetNS  uint64 `json:"netns"`
	Handle uint64 `json:"handle"`
}

// stateSet is one learned set of the file.
type stateSet struct {
	Name   string `json:"name,omitempty"` // "" in version 1
	Handle uint64 `json:"handle,omitempty"`
	Rule   string `json:"rule"`
	Group  string `json:"group,omitempty"`
}

// stateEntry is one learned address in the state file: 28 bytes and no
// pointer, so that a million of them cost the garbage collector nothing
// to scan.
type stateEntry struct {
	set     int32    // index in state.Sets
	a       [16]byte // the address in its 16-byte form
	Expires wall
}

func entryOf(set int32, a netip.Addr, exp wall) stateEntry {
	return stateEntry{set: set, a: a.As16(), Expires: exp}
}

// Addr is e's address, IPv4 as IPv4.
func (e *stateEntry) Addr() netip.Addr { return netip.AddrFrom16(e.a).Unmap() }

// state is a state file, read or to write.
type state struct {
	Version int         `json:"version"`
	Table   *stateIdent `json:"table,omitempty"`
	Sets    []stateSet  `json:"sets"`
	// Journal is the id of the journal that extends the file (see
	// journal.go); "" for none. Files without it are read as before.
	Journal string       `json:"journal,omitempty"`
	Learned []stateEntry `json:"-"`
}

// stateV1Entry is an entry of a version 1 file.
type stateV1Entry struct {
	Rule    string     `json:"rule"`
	Group   string     `json:"group,omitempty"`
	Addr    netip.Addr `json:"addr"`
	Expires time.Time  `json:"expires"`
}

// learnedOpen ends the first line: the entries follow, one a line.
const learnedOpen = `,"learned":[`

// readState reads the state file at path; a missing file is a nil state.
func readState(path string) (*state, error) {
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := decodeState(bufio.NewReaderSize(f, 64<<10))
	if err != nil {
		return nil, fmt.Errorf("decoding %s: %w", path, err)
	}
	return st, nil
}

// decodeState reads a state file. Nothing in it is trusted: every line
// is checked, and any fault fails the whole file.
func decodeState(r *bufio.Reader) (*state, error) {
	first, err := r.ReadBytes('\n')
	if err != nil && err != io.EOF {
		return nil, err
	}
	var head struct {
		Version int `json:"version"`
	}
	if v1 := bytes.HasPrefix(first, []byte(`{"version":1,`)); v1 {
		rest, err := io.ReadAll(r)
		if err != nil {
			return nil, err
		}
		return decodeStateV1(append(first, rest...))
	}
	line := bytes.TrimRight(first, "\n")
	if !bytes.HasSuffix(line, []byte(learnedOpen)) {
		if json.Unmarshal(line, &head) == nil && head.Version != stateVersion {
			return nil, fmt.Errorf("version %d, want %d or 1", head.Version, stateVersion)
		}
		return nil, errors.New("line 1 does not end the header with " + learnedOpen)
	}
	st := new(state)
	hdr := append(bytes.Clone(line[:len(line)-len(learnedOpen)]), '}')
	if err := json.Unmarshal(hdr, st); err != nil {
		return nil, fmt.Errorf("line 1: %w", err)
	}
	if st.Version != stateVersion {
		return nil, fmt.Errorf("version %d, want %d or 1", st.Version, stateVersion)
	}
	if len(st.Sets) > 1<<20 {
		return nil, fmt.Errorf("line 1: %d sets", len(st.Sets))
	}
	for n := 2; ; n++ {
		line, err := r.ReadSlice('\n')
		if err != nil {
			if err == io.EOF {
				return nil, fmt.Errorf("line %d: the file ends before its last line, ]}", n)
			}
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		line = line[:len(line)-1]
		if string(line) == "]}" {
			if _, err := r.ReadByte(); err != io.EOF {
				return nil, fmt.Errorf("line %d: more after the last line, ]}", n+1)
			}
			return st, nil
		}
		e, err := parseStateEntry(line, len(st.Sets))
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		st.Learned = append(st.Learned, e)
	}
}

// parseStateEntry parses `[set,"addr",expires]`, with a comma after it
// on every line but the last one's (not checked).
func parseStateEntry(line []byte, sets int) (stateEntry, error) {
	bad := func(what string) (stateEntry, error) {
		return stateEntry{}, fmt.Errorf("%s in %.80q; want [set,\"address\",expires-unix-ms]", what, line)
	}
	line = bytes.TrimSuffix(line, []byte(","))
	if len(line) < 2 || line[0] != '[' || line[len(line)-1] != ']' {
		return bad("not an entry")
	}
	var f [3][]byte
	rest := line[1 : len(line)-1]
	for i := range f {
		c := bytes.IndexByte(rest, ',')
		if (c < 0) != (i == 2) {
			return bad("not three fields")
		}
		if c < 0 {
			f[i] = rest
		} else {
			f[i], rest = rest[:c], rest[c+1:]
		}
	}
	set, err := strconv.ParseUint(string(f[0]), 10, 31)
	if err != nil || int(set) >= sets {
		return bad("no such set")
	}
	q := f[1]
	if len(q) < 2 || q[0] != '"' || q[len(q)-1] != '"' {
		return bad("no quoted address")
	}
	a, err := netip.ParseAddr(string(q[1 : len(q)-1]))
	if err != nil || a.Zone() != "" {
		return bad("a bad address")
	}
	ms, err := strconv.ParseInt(string(f[2]), 10, 64)
	if err != nil || ms <= 0 || ms > 1<<43 {
		return bad("a bad expiry")
	}
	return entryOf(int32(set), a, wall(ms*int64(time.Millisecond))), nil
}

// decodeStateV1 reads a version 1 file: its sets are its rule×group pairs,
// with no name.
func decodeStateV1(data []byte) (*state, error) {
	var f struct {
		Learned []stateV1Entry `json:"learned"`
	}
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, err
	}
	st := &state{Version: 1}
	idx := make(map[[2]string]int32)
	for _, e := range f.Learned {
		if !e.Addr.IsValid() {
			continue
		}
		k := [2]string{e.Rule, e.Group}
		i, ok := idx[k]
		if !ok {
			i = int32(len(st.Sets))
			idx[k] = i
			st.Sets = append(st.Sets, stateSet{Rule: e.Rule, Group: e.Group})
		}
		st.Learned = append(st.Learned, entryOf(i, e.Addr, wallOf(e.Expires)))
	}
	return st, nil
}

// writeState replaces the file atomically: a crash leaves the old or the
// new file, never half of one. It writes through a buffer, an entry at a
// time: with a million entries the file is some 40 MB, which should not
// be in memory at once on top of the entries.
func writeState(path string, st *state) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("writing state file: %w", err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly after the rename
	fail := func(err error) error {
		tmp.Close()
		return fmt.Errorf("writing state file: %w", err)
	}
	st.Version = stateVersion
	hdr, err := json.Marshal(st)
	if err != nil {
		return fail(err)
	}
	w := bufio.NewWriterSize(tmp, 64<<10)
	w.Write(hdr[:len(hdr)-1]) // without its }
	w.WriteString(learnedOpen + "\n")
	var buf []byte
	for i := range st.Learned {
		e := &st.Learned[i]
		buf = append(buf[:0], '[')
		buf = strconv.AppendInt(buf, int64(e.set), 10)
		buf = append(buf, ',', '"')
		buf = e.Addr().AppendTo(buf)
		buf = append(buf, '"', ',')
		// Rounded down: the file never says an element lasts longer
		// than the kernel holds it (see Backend.adopt).
		buf = strconv.AppendInt(buf, int64(e.Expires)/int64(time.Millisecond), 10)
		buf = append(buf, ']')
		if i < len(st.Learned)-1 {
			buf = append(buf, ',')
		}
		buf = append(buf, '\n')
		w.Write(buf)
	}
	w.WriteString("]}\n")
	if err := w.Flush(); err != nil {
		return fail(err)
	}
	if err := tmp.Sync(); err != nil {
		return fail(err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing state file: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("writing state file: %w", err)
	}
	return nil
}

// CheckStateFile reports whether path can be the state file: it names a
// file (not a directory) in a directory that exists. The daemon refuses
// to start otherwise, and fqdngate check reports it, positioned at
// firewall.state_file. Whether fqdngate's user may write there shows at
// the first write (logged and counted, see save): check may run as
// another user. An empty path, which keeps learned addresses only in
// the kernel, is fine.
func CheckStateFile(path string) error {
	if path == "" {
		return nil
	}
	fix := `set firewall.state_file to a file in an existing directory, or to "" to keep learned addresses only in the kernel (they then survive a restart of fqdngate, but not of the host)`
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		return fmt.Errorf("%s is a directory; name a file in it, like %s", path, filepath.Join(path, "state.json"))
	}
	dir := filepath.Dir(path)
	fi, err := os.Stat(dir)
	switch {
	case os.IsNotExist(err):
		return fmt.Errorf("the directory %s does not exist: create it, writable by the user fqdngate runs as (the systemd unit's StateDirectory=fqdngate does), or %s", dir, fix)
	case err != nil:
		return fmt.Errorf("the directory %s cannot be read (%v): let fqdngate's user reach it, or %s", dir, err, fix)
	case !fi.IsDir():
		return fmt.Errorf("%s is not a directory: %s", dir, fix)
	}
	return nil
}

// SetStateFile makes the next write of the state file go to path (""
// stops writing it); the old file is left as it is. The learned
// addresses are written there within saveDelay, whether or not they
// changed. Check path with CheckStateFile first.
func (b *Backend) SetStateFile(path string) {
	b.stateMu.Lock()
	defer b.stateMu.Unlock()
	if path == b.statePath {
		return
	}
	b.statePath, b.stateErr = path, ""
	b.memMu.Lock()
	b.dirty = true
	// The new path starts with a snapshot; nothing to journal until then.
	b.journaling = false
	b.dropChanges()
	b.memMu.Unlock()
}

// StateFile returns the path the state file is written to.
func (b *Backend) StateFile() string {
	b.stateMu.Lock()
	defer b.stateMu.Unlock()
	return b.statePath
}

// saveLoop writes the state file shortly after each change, and once more
// when ctx ends.
func (b *Backend) saveLoop(ctx context.Context) {
	t := time.NewTicker(saveDelay)
	defer t.Stop()
	var next time.Time
	for {
		select {
		case <-ctx.Done():
			b.save()
			b.stateMu.Lock()
			b.jw.close()
			b.stateMu.Unlock()
			return
		case now := <-t.C:
			if now.Before(next) {
				continue
			}
			b.save()
			// A snapshot of millions takes a while to write; spend at most
			// a tenth of the time on it.
			next = time.Now().Add(9 * time.Since(now))
		}
	}
}

// save writes what changed in the mirror since the last save: an append
// to the journal, or (the first time, after a change of the sets, the
// path or the kernel's handles, after a failure, or when the journal
// holds more records than the snapshot entries) a new snapshot and an
// empty journal. A failed write is tried again at the next tick, as a
// snapshot; it is logged when the condition changes (a first failure,
// another error, success again), not at every attempt, and counted
// every time.
func (b *Backend) save() {
	b.stateMu.Lock()
	defer b.stateMu.Unlock()
	path := b.statePath
	if path == "" {
		b.jw.close()
		return
	}
	b.memMu.Lock()
	dirty := b.dirty
	b.dirty = false
	changes := b.changes
	full := !b.journaling || b.jw.f == nil || b.jw.path != path || b.jw.gen != b.ident.gen ||
		b.jw.records+len(changes) > journalBound(b.jw.entries)
	if dirty && !full {
		b.changes, b.spare = b.spare[:0], nil
	}
	b.memMu.Unlock()
	if !dirty {
		return
	}
	var (
		err     error
		learned int
	)
	if full {
		learned, err = b.snapshotLocked(path)
	} else {
		err = b.jw.add(changes)
		if cap(changes) <= journalMin {
			b.memMu.Lock()
			b.spare = changes[:0]
			b.memMu.Unlock()
		}
	}
	if err == nil {
		if b.stateErr != "" {
			b.log.Info("state file written again", "file", path, "learned", learned)
			b.stateErr = ""
		}
		return
	}
	b.stateWriteFailures.Add(1)
	b.memMu.Lock()
	b.dirty = true // try again next tick, with a snapshot
	b.journaling = false
	b.memMu.Unlock()
	if cond := errCondition(err); cond != b.stateErr {
		b.stateErr = cond
		b.log.Error("cannot write the state file: learned addresses will not survive a restart until it can be written; retrying", "file", path, "err", err)
	}
}

// snapshotLocked writes the whole state file to path, and an empty
// journal for it, and returns how many entries it wrote. The snapshot is
// renamed into place before the journal: a crash between the two leaves
// the new snapshot and the old journal, which names the old one and is
// ignored.
func (b *Backend) snapshotLocked(path string) (int, error) {
	b.jw.close()
	id, err := newJournalID()
	if err != nil {
		return 0, fmt.Errorf("writing state file: %w", err)
	}
	st, gen := b.stateLocked()
	st.Journal = id
	if err := writeState(path, st); err != nil {
		return 0, err
	}
	return len(st.Learned), b.jw.start(path, st, gen)
}

// stateLocked returns the learned elements the kernel holds, as the state
// file lists them (what Learned returns, without the copy of it), with
// the kernel's names for the table and sets they are in, if known, and
// the kernelIdent generation of those names. Every learned set of the
// applied policy is listed, with elements or not, so that the journal
// can name it. An element of a set that no Apply claimed yet (adopted)
// is left out. The changes noted until now are in it: the journal
// starts here.
func (b *Backend) stateLocked() (*state, uint64) {
	now := b.now()
	b.memMu.Lock()
	defer b.memMu.Unlock()
	b.dropChanges()
	b.journaling = true
	st := &state{Learned: make([]stateEntry, 0, b.programmed)}
	gen, table := b.ident.gen, b.ident.table
	idx := make(map[setID]int32, len(b.owner))
	for _, name := range slices.Sorted(maps.Keys(b.owner)) {
		o := b.owner[name]
		idx[internSet(name)] = int32(len(st.Sets))
		st.Sets = append(st.Sets, stateSet{Name: name, Handle: b.ident.sets[name], Rule: o.rule, Group: o.group})
	}
	yield := b.yielderLocked()
	for k, exp := range b.mirrorAll {
		if !exp.After(now) {
			b.mirrorDel(k) // the kernel expired it too
		} else if i, ok := idx[k.s]; ok {
			st.Learned = append(st.Learned, stateEntry{set: i, a: k.a, Expires: exp})
		}
		yield() // last: exp is stale once the lock was let go
	}
	// A commit while the walk let go of the lock may have replaced a set
	// under the same name: then the file does not say which set its
	// entries were in, and the next start lists the sets from the kernel.
	// (The commit also stopped the journal: the next save is a snapshot.)
	if table.Boot != "" && b.ident.gen == gen {
		st.Table = &table
	}
	return st, gen
}

// errCondition names the condition behind a write error, so that the same
// condition (say, a full disk) is logged once however many temporary file
// names it fails with.
func errCondition(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	return err.Error()
}
