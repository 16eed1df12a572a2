package nft

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"
)

// stateEntry is one learned address in the state file.
type stateEntry struct {
	Rule    string     `json:"rule"`
	Group   string     `json:"group,omitempty"`
	Addr    netip.Addr `json:"addr"`
	Expires time.Time  `json:"expires"`
}

type stateFile struct {
	Version int          `json:"version"`
	Learned []stateEntry `json:"learned"`
}

const stateVersion = 1

func readState(path string) ([]stateEntry, error) {
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var f stateFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("decoding %s: %w", path, err)
	}
	if f.Version != stateVersion {
		return nil, fmt.Errorf("%s has version %d, want %d", path, f.Version, stateVersion)
	}
	return f.Learned, nil
}

// writeState replaces the file atomically: a crash leaves the old or the
// new file, never half of one. It encodes an entry at a time into a
// buffered writer: with a million entries the file is some 100 MB, which
// should not be in memory at once on top of the entries.
func writeState(path string, entries []stateEntry) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("writing state file: %w", err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly after the rename
	w := bufio.NewWriterSize(tmp, 64<<10)
	fmt.Fprintf(w, `{"version":%d,"learned":[`, stateVersion)
	enc := json.NewEncoder(w)
	for i := range entries {
		if i > 0 {
			w.WriteByte(',')
		}
		if err := enc.Encode(&entries[i]); err != nil {
			tmp.Close()
			return fmt.Errorf("writing state file: %w", err)
		}
	}
	w.WriteString("]}\n")
	if err := w.Flush(); err != nil {
		tmp.Close()
		return fmt.Errorf("writing state file: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("writing state file: %w", err)
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
			return
		case now := <-t.C:
			if now.Before(next) {
				continue
			}
			b.save()
			// A table of millions takes a while to write; spend at most a
			// tenth of the time on it.
			next = time.Now().Add(9 * time.Since(now))
		}
	}
}

// save writes the state file if the mirror changed since the last write.
// A failed write is tried again at the next tick; it is logged when the
// condition changes (a first failure, another error, success again), not
// at every attempt, and counted every time.
func (b *Backend) save() {
	b.stateMu.Lock()
	defer b.stateMu.Unlock()
	path := b.statePath
	if path == "" {
		return
	}
	b.memMu.Lock()
	dirty := b.dirty
	b.dirty = false
	b.memMu.Unlock()
	if !dirty {
		return
	}
	entries := b.stateEntries()
	slices.SortFunc(entries, func(a, b stateEntry) int { return a.Expires.Compare(b.Expires) })
	err := writeState(path, entries)
	if err == nil {
		if b.stateErr != "" {
			b.log.Info("state file written again", "file", path, "learned", len(entries))
			b.stateErr = ""
		}
		return
	}
	b.stateWriteFailures.Add(1)
	b.memMu.Lock()
	b.dirty = true // try again next tick
	b.memMu.Unlock()
	if cond := errCondition(err); cond != b.stateErr {
		b.stateErr = cond
		b.log.Error("cannot write the state file: learned addresses will not survive a restart until it can be written; retrying", "file", path, "err", err)
	}
}

// stateEntries returns the learned elements the kernel holds, as the
// state file lists them: what Learned returns, without the copy of it.
func (b *Backend) stateEntries() []stateEntry {
	now := b.now()
	b.memMu.Lock()
	defer b.memMu.Unlock()
	yield := b.yielderLocked()
	out := make([]stateEntry, 0, b.programmed)
	for k, exp := range b.mirrorAll {
		if !exp.After(now) {
			b.mirrorDel(k) // the kernel expired it too
		} else if o, ok := b.owner[k.set()]; ok { // else adopted, and not yet claimed by an Apply
			out = append(out, stateEntry{Rule: o.rule, Group: o.group, Addr: k.addr(), Expires: exp.Time().UTC().Truncate(time.Millisecond)})
		}
		yield() // last: exp is stale once the lock was let go
	}
	return out
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
