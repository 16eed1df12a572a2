package nft

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
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
// new file, never half of one.
func writeState(path string, entries []stateEntry) error {
	data, err := json.Marshal(stateFile{Version: stateVersion, Learned: entries})
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("writing state file: %w", err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly after the rename
	if _, err := tmp.Write(data); err != nil {
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

// saveLoop writes the state file shortly after each change, and once more
// when ctx ends.
func (b *Backend) saveLoop(ctx context.Context) {
	if b.cfg.StateFile == "" {
		return
	}
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

func (b *Backend) save() {
	b.memMu.Lock()
	dirty := b.dirty
	b.dirty = false
	b.memMu.Unlock()
	if !dirty {
		return
	}
	learned := b.Learned()
	entries := make([]stateEntry, 0, len(learned))
	for _, e := range learned {
		entries = append(entries, stateEntry{Rule: e.Rule, Group: e.Group, Addr: e.Addr, Expires: e.Expires.UTC().Truncate(time.Millisecond)})
	}
	slices.SortFunc(entries, func(a, b stateEntry) int { return a.Expires.Compare(b.Expires) })
	if err := writeState(b.cfg.StateFile, entries); err != nil {
		b.log.Warn("learned addresses will not survive a restart", "err", err)
		b.memMu.Lock()
		b.dirty = true // try again next tick
		b.memMu.Unlock()
	}
}
