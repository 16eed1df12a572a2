package nft

import (
	"bytes"
	"cmp"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"slices"
)

// The journal extends the state file (the snapshot) with the changes of
// the mirror since the snapshot was written, so that saving costs what
// changed, not the whole table: the save loop appends the changes of the
// last half second to it, in one write and one fsync, and writes a new
// snapshot, with a new journal, only when the journal holds more records
// than the snapshot entries (or than journalMin), when the sets changed
// (an Apply, a rebuild, a new path), or when an append failed. Each
// element is thus written O(1) times per change, amortized.
//
// It is binary, little-endian, next to the snapshot (<state>.journal):
//
//	header:  "fqdngate-journal" (16 bytes), version uint32, snapshot id [16]byte
//	batch:   record count uint32, CRC-32C of the records uint32, records
//	record:  set uint32 (index in the snapshot's sets), address [16]byte,
//	         expiry int64 (Unix ms, rounded down; 0: the element was removed)
//
// The snapshot names its journal by a random id ("journal" in its first
// line); a journal with another id is of an older or newer snapshot (a
// crash between the two writes) and is ignored. A batch is one append: a
// crash during it leaves a short or unchecked last batch, which is
// ignored; anything else malformed rejects the journal, not the snapshot
// (then the start is as it was before the journal: the snapshot alone,
// older).

const (
	journalMagic   = "fqdngate-journal"
	journalVersion = 1
	journalHdrLen  = len(journalMagic) + 4 + 16
	journalBatchHd = 8
	journalRecLen  = 4 + 16 + 8
	// journalMin is how many records the journal may hold whatever the
	// snapshot's size: below it, a snapshot is cheap anyway.
	journalMin = 1 << 16
)

var crc32c = crc32.MakeTable(crc32.Castagnoli)

// journalPath is where the journal of the state file at path is.
func journalPath(path string) string { return path + ".journal" }

// journalRec is a change of the mirror, as the backend keeps it until the
// next append: 28 bytes, no pointer.
type journalRec struct {
	k   elemKey
	exp wall4 // 0: removed
}

// dropChanges empties the changes noted, and lets go of their memory if
// it is more than a steady flow needs: a fill of a million addresses
// notes a million changes between two saves (memMu held).
func (b *Backend) dropChanges() {
	if cap(b.changes) > journalMin {
		b.changes = nil
	}
	b.changes = b.changes[:0]
}

// journalBound is how many records a journal of a snapshot of n entries
// may hold before a new snapshot is cheaper.
func journalBound(n int) int { return max(n, journalMin) }

// noteLocked records a change of the mirror for the journal: k is held
// until exp, or (exp 0) no longer. It costs an append to a slice; past
// journalBound records, it gives up on the journal until the next
// snapshot, which the changes make due anyway (memMu held).
func (b *Backend) noteLocked(k elemKey, exp wall) {
	if !b.journaling {
		return
	}
	if len(b.changes) >= journalBound(b.programmed) {
		b.changes, b.journaling = nil, false
		return
	}
	b.changes = append(b.changes, journalRec{k, exp.pack()})
}

// journalWriter is the journal being appended to (under stateMu).
type journalWriter struct {
	f    *os.File // nil: none; the next save writes a snapshot
	path string   // the state file's path, which the journal is next to
	// gen is the kernelIdent generation the snapshot was taken at: the
	// set handles it names.
	gen uint64
	// sets maps a set to its index in the snapshot; entries is how many
	// the snapshot holds, records how many the journal holds.
	sets             map[setID]uint32
	entries, records int
	buf              []byte
}

// newJournalID returns a random snapshot id, in hex.
func newJournalID() (string, error) {
	var id [16]byte
	if _, err := rand.Read(id[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(id[:]), nil
}

// start replaces the journal next to path with an empty one for the
// snapshot st (just written, with st.Journal its id), atomically, and
// keeps it open for appends.
func (j *journalWriter) start(path string, st *state, gen uint64) error {
	j.close()
	id, err := hex.DecodeString(st.Journal)
	if err != nil || len(id) != 16 {
		return fmt.Errorf("writing the state file's journal: bad id %q", st.Journal)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(journalPath(path))+".tmp*")
	if err != nil {
		return fmt.Errorf("writing the state file's journal: %w", err)
	}
	fail := func(err error) error {
		tmp.Close()
		os.Remove(tmp.Name())
		return fmt.Errorf("writing the state file's journal: %w", err)
	}
	hdr := make([]byte, 0, journalHdrLen)
	hdr = append(hdr, journalMagic...)
	hdr = binary.LittleEndian.AppendUint32(hdr, journalVersion)
	hdr = append(hdr, id...)
	if _, err := tmp.Write(hdr); err != nil {
		return fail(err)
	}
	if err := tmp.Sync(); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp.Name(), journalPath(path)); err != nil {
		return fail(err)
	}
	j.f, j.path, j.gen = tmp, path, gen
	j.sets = make(map[setID]uint32, len(st.Sets))
	for i, s := range st.Sets {
		j.sets[internSet(s.Name)] = uint32(i)
	}
	j.entries, j.records = len(st.Learned), 0
	return nil
}

// add appends recs to the journal as one batch, and syncs it. Changes of
// sets the snapshot does not list (adopted, not claimed by an Apply: the
// snapshot leaves them out too) are left out. On failure the journal is
// closed: a batch may be half written, so nothing may follow it.
//
// It first checks that the snapshot and the journal are still where they
// were written (two stats): an append to a journal someone removed, or
// whose directory went, succeeds, and would be lost without a word.
func (j *journalWriter) add(recs []journalRec) error {
	if err := j.inPlace(); err != nil {
		j.close()
		return fmt.Errorf("appending to the state file's journal: %w", err)
	}
	j.buf = append(j.buf[:0], make([]byte, journalBatchHd)...)
	n := 0
	for _, r := range recs {
		set, ok := j.sets[r.k.s]
		if !ok {
			continue
		}
		ms := int64(r.exp.wall()) / 1e6
		if r.exp != (wall4{}) && ms <= 0 {
			continue // not a time the file can say
		}
		j.buf = binary.LittleEndian.AppendUint32(j.buf, set)
		j.buf = append(j.buf, r.k.a[:]...)
		j.buf = binary.LittleEndian.AppendUint64(j.buf, uint64(ms))
		n++
	}
	if n == 0 {
		return nil
	}
	binary.LittleEndian.PutUint32(j.buf, uint32(n))
	binary.LittleEndian.PutUint32(j.buf[4:], crc32.Checksum(j.buf[journalBatchHd:], crc32c))
	_, err := j.f.Write(j.buf)
	if err == nil {
		err = j.f.Sync()
	}
	if err != nil {
		j.close()
		return fmt.Errorf("appending to the state file's journal: %w", err)
	}
	j.records += n
	if cap(j.buf) > 1<<20 {
		j.buf = nil
	}
	return nil
}

// inPlace reports whether the snapshot is at its path and the open
// journal at its own.
func (j *journalWriter) inPlace() error {
	if _, err := os.Stat(j.path); err != nil {
		return err
	}
	fi, err := os.Stat(journalPath(j.path))
	if err != nil {
		return err
	}
	open, err := j.f.Stat()
	if err != nil {
		return err
	}
	if !os.SameFile(fi, open) {
		return fmt.Errorf("%s was replaced by another file", journalPath(j.path))
	}
	return nil
}

func (j *journalWriter) close() {
	if j.f != nil {
		j.f.Close()
	}
	j.f, j.sets = nil, nil
}

// errJournalOther: the journal is of another snapshot.
var errJournalOther = errors.New("the journal is of another snapshot")

// journalEntry is a record of a journal read back.
type journalEntry struct {
	set int32
	a   [16]byte
	exp wall  // 0: removed
	seq int32 // its place in the journal
}

// readJournal applies the journal next to path to st, the snapshot read
// from path, and returns how many records it applied. A missing journal,
// or a snapshot that names none, is no error and changes nothing; on an
// error st is unchanged.
func readJournal(path string, st *state) (int, error) {
	if st == nil || st.Journal == "" {
		return 0, nil
	}
	f, err := os.Open(journalPath(path))
	if os.IsNotExist(err) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	// The writer starts a new snapshot before the journal outgrows it.
	if limit := int64(journalHdrLen + 2*journalBound(len(st.Learned))*(journalRecLen+journalBatchHd)); fi.Size() > limit {
		return 0, fmt.Errorf("%d bytes, more than a journal of %d entries ever holds", fi.Size(), len(st.Learned))
	}
	data := make([]byte, fi.Size())
	if _, err := f.ReadAt(data, 0); err != nil {
		return 0, err
	}
	recs, err := decodeJournal(data, st.Journal, len(st.Sets))
	if err != nil {
		return 0, err
	}
	st.applyJournal(recs)
	return len(recs), nil
}

// decodeJournal parses a journal of the snapshot whose id is id and which
// lists sets sets. Nothing in it is trusted: every field is checked.
func decodeJournal(data []byte, id string, sets int) ([]journalEntry, error) {
	if len(data) < journalHdrLen || string(data[:len(journalMagic)]) != journalMagic {
		return nil, errors.New("not a journal: no header")
	}
	if v := binary.LittleEndian.Uint32(data[len(journalMagic):]); v != journalVersion {
		return nil, fmt.Errorf("version %d, want %d", v, journalVersion)
	}
	if hex.EncodeToString(data[len(journalMagic)+4:journalHdrLen]) != id {
		return nil, errJournalOther
	}
	out := make([]journalEntry, 0, (len(data)-journalHdrLen)/journalRecLen)
	for off := journalHdrLen; off < len(data); {
		rest := data[off:]
		// A crash during an append leaves a short batch, a batch whose
		// records do not match its checksum, or zeros, at the end.
		torn := func() bool { return allZero(rest) }
		if len(rest) < journalBatchHd {
			return out, nil
		}
		n := int(binary.LittleEndian.Uint32(rest))
		if n > (len(rest)-journalBatchHd)/journalRecLen {
			return out, nil // runs past the end: the last append was cut
		}
		body := rest[journalBatchHd : journalBatchHd+n*journalRecLen]
		last := journalBatchHd+len(body) == len(rest)
		if n == 0 || crc32.Checksum(body, crc32c) != binary.LittleEndian.Uint32(rest[4:]) {
			if last || torn() {
				return out, nil
			}
			return nil, fmt.Errorf("offset %d: a batch of %d records that fails its checksum, with more after it", off, n)
		}
		for i := 0; i < n; i++ {
			r := body[i*journalRecLen:]
			set := binary.LittleEndian.Uint32(r)
			ms := int64(binary.LittleEndian.Uint64(r[20:]))
			if set >= uint32(sets) {
				return nil, fmt.Errorf("offset %d: set %d, but the snapshot lists %d", off+journalBatchHd+i*journalRecLen, set, sets)
			}
			if ms < 0 || ms > 1<<43 {
				return nil, fmt.Errorf("offset %d: a bad expiry, %d", off+journalBatchHd+i*journalRecLen, ms)
			}
			e := journalEntry{set: int32(set), exp: wall(ms * 1e6), seq: int32(len(out))}
			copy(e.a[:], r[4:20])
			out = append(out, e)
		}
		off += journalBatchHd + len(body)
	}
	return out, nil
}

func allZero(b []byte) bool { return len(bytes.Trim(b, "\x00")) == 0 }

// applyJournal applies recs to st's entries, in order: the last record of
// an element says whether it is held, and until when. It sorts both (a
// million map lookups would cost a cache miss each) and merges them;
// st's entries come out in element order, which nothing depends on.
func (st *state) applyJournal(recs []journalEntry) {
	if len(recs) == 0 {
		return
	}
	slices.SortFunc(recs, func(x, y journalEntry) int {
		if c := cmpElem(x.set, &x.a, y.set, &y.a); c != 0 {
			return c
		}
		return cmp.Compare(x.seq, y.seq)
	})
	last := recs[:0] // the last record of each element
	for i := range recs {
		if i+1 < len(recs) && recs[i].set == recs[i+1].set && recs[i].a == recs[i+1].a {
			continue
		}
		last = append(last, recs[i])
	}
	slices.SortFunc(st.Learned, func(x, y stateEntry) int { return cmpElem(x.set, &x.a, y.set, &y.a) })
	out := make([]stateEntry, 0, len(st.Learned)+len(last))
	i := 0
	for _, r := range last {
		for i < len(st.Learned) && cmpElem(st.Learned[i].set, &st.Learned[i].a, r.set, &r.a) < 0 {
			out = append(out, st.Learned[i])
			i++
		}
		held := false
		for i < len(st.Learned) && st.Learned[i].set == r.set && st.Learned[i].a == r.a {
			if r.exp != 0 {
				e := st.Learned[i]
				e.Expires = r.exp
				out = append(out, e)
			}
			held = true
			i++
		}
		if !held && r.exp != 0 {
			out = append(out, stateEntry{set: r.set, a: r.a, Expires: r.exp})
		}
	}
	st.Learned = append(out, st.Learned[i:]...)
}

// cmpElem orders elements by set, then address, as two machine words:
// any order does, if both sides of the merge use it.
func cmpElem(xs int32, xa *[16]byte, ys int32, ya *[16]byte) int {
	if xs != ys {
		return cmp.Compare(xs, ys)
	}
	if x, y := binary.NativeEndian.Uint64(xa[:8]), binary.NativeEndian.Uint64(ya[:8]); x != y {
		return cmp.Compare(x, y)
	}
	return cmp.Compare(binary.NativeEndian.Uint64(xa[8:]), binary.NativeEndian.Uint64(ya[8:]))
}
