package history

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// Key is what a row aggregates over within one UTC day.
type Key struct {
	// Group is the source group that matched the decision's rule, or, when
	// none did, the groups of the source joined by ",", "" for none.
	Group     string
	Source    netip.Addr
	Component string // dns, proxy, firewall
	Name      string // the name asked for, or the address for an IP literal or a kernel drop
	Port      uint16 // 0 for DNS
	QType     string // DNS only
	Action    string
	Rule      string
	Reason    string
}

// Limits of the sets a row keeps: enough to read what a name resolves
// to or dials, bounded so that a name with a huge CDN pool or a client
// sending random SNI cannot grow a row.
const (
	maxAnswers = 16
	maxSNI     = 4
	maxCert    = 2
)

// agg is one row being aggregated in memory.
type agg struct {
	first, last time.Time
	hits        int64
	answers     []string
	sni         []string
	cert        []string
	// lastAnswers is the answer set last merged into answers, as the
	// decision carried it.
	lastAnswers string
}

// rowKey is a row's identity: a day and a Key.
type rowKey struct {
	day string // 2006-01-02, UTC
	Key
}

// Day returns t's UTC day as the store writes it.
func Day(t time.Time) string { return t.UTC().Format(time.DateOnly) }

// Options configure a Store.
type Options struct {
	// Retention keeps this many days (today included). If zero, 30 days.
	Retention time.Duration
	// MaxSize bounds the data in bytes; the oldest days are dropped to
	// stay under it. If zero, unbounded.
	MaxSize int64
	// Now is the clock. If nil, time.Now.
	Now func() time.Time
	// BusyTimeout is how long a write waits for another process's lock.
	// If zero, 5s.
	BusyTimeout time.Duration
	// ReadOnly opens an existing file for reading only: no schema is
	// created, nothing is dropped.
	ReadOnly bool
}

// Store is one history file. It is safe for concurrent use; one writer
// (the Recorder) and any number of readers.
type Store struct {
	path string
	opts Options

	// mu guards db: Replace swaps it (Lock); everything else uses it
	// (RLock), and sql.DB serialises what needs it. One goroutine writes.
	mu sync.RWMutex
	db *sql.DB
	// over: the day in force alone is over MaxSize.
	over atomic.Bool
}

// ErrOverSize is returned by Write when today's rows alone fill
// max_size: new rows wait for the next day (or a larger max_size).
var ErrOverSize = errors.New("the history is at history.max_size with today's rows alone; raise max_size")

const schema = `
CREATE TABLE IF NOT EXISTS decisions (
	day        TEXT    NOT NULL,
	grp        TEXT    NOT NULL,
	source     TEXT    NOT NULL,
	component  TEXT    NOT NULL,
	name       TEXT    NOT NULL,
	port       INTEGER NOT NULL,
	qtype      TEXT    NOT NULL,
	action     TEXT    NOT NULL,
	rule       TEXT    NOT NULL,
	reason     TEXT    NOT NULL,
	answers    TEXT    NOT NULL,
	sni        TEXT    NOT NULL,
	cert       TEXT    NOT NULL,
	first_seen INTEGER NOT NULL,
	last_seen  INTEGER NOT NULL,
	hits       INTEGER NOT NULL,
	PRIMARY KEY (day, grp, source, component, name, port, qtype, action, rule, reason)
) WITHOUT ROWID;
`

var registerOnce sync.Once

// registerFuncs adds merge_set(a, b, max) to the driver: the union of two
// comma-separated sets, sorted, at most max elements.
func registerFuncs() {
	registerOnce.Do(func() {
		_ = sqlite.RegisterDeterministicScalarFunction("merge_set", 3, func(_ *sqlite.FunctionContext, args []driver.Value) (driver.Value, error) {
			a, _ := args[0].(string)
			b, _ := args[1].(string)
			n, _ := args[2].(int64)
			return strings.Join(mergeSet(splitSet(a), splitSet(b), int(n)), ","), nil
		})
	})
}

func splitSet(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

// mergeSet returns the sorted union of a and b, at most max elements
// (the first in sort order: a row keeps a stable sample).
func mergeSet(a, b []string, max int) []string {
	out := make([]string, 0, len(a)+len(b))
	out = append(out, a...)
	out = append(out, b...)
	sort.Strings(out)
	j := 0
	for i, v := range out {
		if v == "" || (i > 0 && v == out[i-1]) {
			continue
		}
		out[j] = v
		j++
	}
	out = out[:j]
	if len(out) > max {
		out = out[:max]
	}
	return out
}

// Open opens (creating it and its directory when needed) the history
// file at path, and drops the days retention no longer keeps. A file that
// is not a database or fails SQLite's quick check is moved aside to
// path.corrupt-<time> and a new one started: replaced names where it went.
func Open(path string, o Options) (s *Store, replaced string, err error) {
	if o.Retention == 0 {
		o.Retention = 30 * 24 * time.Hour
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.BusyTimeout == 0 {
		o.BusyTimeout = 5 * time.Second
	}
	registerFuncs()
	s = &Store{path: path, opts: o}
	if o.ReadOnly {
		if _, err := os.Stat(path); err != nil {
			return nil, "", fmt.Errorf("opening history %s: %w", path, err)
		}
	} else if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, "", fmt.Errorf("opening history: creating its directory: %w; set history.path to a writable place or history.enabled: false", err)
	}
	db, err := s.open()
	if err != nil && IsCorrupt(err) && !o.ReadOnly {
		if replaced, err = moveAside(path, o.Now()); err != nil {
			return nil, "", err
		}
		db, err = s.open()
	}
	if err != nil {
		return nil, replaced, err
	}
	s.db = db
	if !o.ReadOnly {
		// Names and source addresses are for the operators' eyes: the
		// file is private, as its directory is.
		for _, f := range []string{path, path + "-wal", path + "-shm"} {
			_ = os.Chmod(f, 0o600)
		}
		if err := s.Prune(context.Background()); err != nil {
			s.Close()
			return nil, replaced, err
		}
	}
	return s, replaced, nil
}

// open opens and checks the database at s.path.
func (s *Store) open() (*sql.DB, error) {
	dsn := "file:" + s.path + "?_pragma=busy_timeout(" + fmt.Sprint(s.opts.BusyTimeout.Milliseconds()) + ")"
	if s.opts.ReadOnly {
		// A reader (fqdngate history, suggest, simulate) is a short
		// process that groups the whole file: pages through mmap, and
		// the GROUP BY's sort in memory up to 128 MiB instead of
		// spilled to temporary files, about halved its time over 30
		// days of 1,000 sources (BENCHMARKS.md, Adoption).
		dsn += "&mode=ro&_pragma=mmap_size(1073741824)&_pragma=temp_store(2)&_pragma=cache_size(-131072)"
	} else {
		// auto_vacuum must be chosen before the first table: dropped
		// days then give their pages back to the file system.
		dsn += "&_pragma=auto_vacuum(incremental)&_pragma=journal_mode(wal)&_pragma=synchronous(normal)&_txlock=immediate"
	}
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("opening history %s: %w", s.path, err)
	}
	fail := func(what string, err error) (*sql.DB, error) {
		db.Close()
		return nil, fmt.Errorf("opening history %s: %s: %w", s.path, what, err)
	}
	var check string
	if err := db.QueryRow("PRAGMA quick_check").Scan(&check); err != nil {
		return fail("checking it", err)
	}
	if check != "ok" {
		return fail("checking it", corruptError(check))
	}
	if !s.opts.ReadOnly {
		if _, err := db.Exec(schema); err != nil {
			return fail("creating its tables", err)
		}
	}
	return db, nil
}

// corruptError is what quick_check found.
type corruptError string

func (e corruptError) Error() string { return "database is corrupt: " + string(e) }

// IsCorrupt reports whether err says the file is not a sound database.
func IsCorrupt(err error) bool {
	var ce corruptError
	if errors.As(err, &ce) {
		return true
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() & 0xff {
		case sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB:
			return true
		}
	}
	return false
}

// IsFull reports whether err says the disk is full (SQLITE_FULL). Other
// I/O errors are not: the rows are kept for the next try.
func IsFull(err error) bool {
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() & 0xff {
		case sqlite3.SQLITE_FULL:
			return true
		}
	}
	return false
}

// moveAside renames path (and its WAL and shared-memory files) to
// path.corrupt-<time>, returning the new name.
func moveAside(path string, now time.Time) (string, error) {
	to := path + ".corrupt-" + now.UTC().Format("20060102T150405Z")
	if err := os.Rename(path, to); err != nil {
		return "", fmt.Errorf("moving the corrupt history %s aside: %w; remove it by hand", path, err)
	}
	for _, ext := range []string{"-wal", "-shm"} {
		_ = os.Rename(path+ext, to+ext)
	}
	return to, nil
}

// Replace moves the (corrupt) file aside and starts a new one in its
// place, returning where the old one went.
func (s *Store) Replace() (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.db.Close()
	to, err := moveAside(s.path, s.opts.Now())
	if err != nil {
		return "", err
	}
	db, err := s.open()
	if err != nil {
		return to, err
	}
	s.db = db
	s.over.Store(false)
	return to, nil
}

// Path is the file's path.
func (s *Store) Path() string { return s.path }

// Close closes the file.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.db.Close()
}

var upsert = fmt.Sprintf(`
INSERT INTO decisions (day, grp, source, component, name, port, qtype, action, rule, reason, answers, sni, cert, first_seen, last_seen, hits)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (day, grp, source, component, name, port, qtype, action, rule, reason) DO UPDATE SET
	answers    = merge_set(answers, excluded.answers, %d),
	sni        = merge_set(sni, excluded.sni, %d),
	cert       = merge_set(cert, excluded.cert, %d),
	first_seen = min(first_seen, excluded.first_seen),
	last_seen  = max(last_seen, excluded.last_seen),
	hits       = hits + excluded.hits`, maxAnswers, maxSNI, maxCert)

// write adds rows in one transaction, then keeps the file under
// MaxSize.
func (s *Store) write(ctx context.Context, rows map[rowKey]*agg) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.over.Load() {
		if err := s.enforceSizeLocked(ctx); err != nil {
			return err
		}
		if s.over.Load() {
			return ErrOverSize
		}
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("writing history: %w", err)
	}
	defer tx.Rollback()
	st, err := tx.PrepareContext(ctx, upsert)
	if err != nil {
		return fmt.Errorf("writing history: %w", err)
	}
	defer st.Close()
	for k, a := range rows {
		src := ""
		if k.Source.IsValid() {
			src = k.Source.String()
		}
		if _, err := st.ExecContext(ctx, k.day, k.Group, src, k.Component, k.Name, int64(k.Port), k.QType, k.Action, k.Rule, k.Reason,
			strings.Join(a.answers, ","), strings.Join(a.sni, ","), strings.Join(a.cert, ","),
			a.first.UnixNano(), a.last.UnixNano(), a.hits); err != nil {
			return fmt.Errorf("writing history: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("writing history: %w", err)
	}
	return s.enforceSizeLocked(ctx)
}

// Size is the bytes the rows use (pages in use; freed pages excluded).
func (s *Store) Size(ctx context.Context) (int64, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.sizeLocked(ctx)
}

func (s *Store) sizeLocked(ctx context.Context) (int64, error) {
	var pages, free, size int64
	if err := s.db.QueryRowContext(ctx, "SELECT page_count, freelist_count, page_size FROM pragma_page_count(), pragma_freelist_count(), pragma_page_size()").Scan(&pages, &free, &size); err != nil {
		return 0, fmt.Errorf("measuring history: %w", err)
	}
	return (pages - free) * size, nil
}

// enforceSizeLocked (s.mu held, either way) drops the oldest days until the rows fit in MaxSize;
// when today's alone do not, it marks the store over.
func (s *Store) enforceSizeLocked(ctx context.Context) error {
	if s.opts.MaxSize <= 0 {
		return nil
	}
	today := Day(s.opts.Now())
	dropped := false
	for {
		used, err := s.sizeLocked(ctx)
		if err != nil {
			return err
		}
		if used <= s.opts.MaxSize {
			s.over.Store(false)
			break
		}
		var oldest sql.NullString
		if err := s.db.QueryRowContext(ctx, "SELECT min(day) FROM decisions").Scan(&oldest); err != nil {
			return fmt.Errorf("bounding history: %w", err)
		}
		if !oldest.Valid || oldest.String >= today {
			s.over.Store(true)
			break
		}
		if _, err := s.db.ExecContext(ctx, "DELETE FROM decisions WHERE day <= ?", oldest.String); err != nil {
			return fmt.Errorf("bounding history: %w", err)
		}
		dropped = true
	}
	if dropped {
		return s.compactLocked(ctx)
	}
	return nil
}

// compactLocked gives freed pages back to the file system.
func (s *Store) compactLocked(ctx context.Context) error {
	if _, err := s.db.ExecContext(ctx, "PRAGMA incremental_vacuum"); err != nil {
		return fmt.Errorf("compacting history: %w", err)
	}
	_, _ = s.db.ExecContext(ctx, "PRAGMA wal_checkpoint(TRUNCATE)")
	return nil
}

// Prune drops the days retention no longer keeps: with 30 days, today
// and the 29 before it stay. The Recorder calls it at start and when
// the day changes.
func (s *Store) Prune(ctx context.Context) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	days := int(s.opts.Retention / (24 * time.Hour))
	if days < 1 {
		days = 1
	}
	cutoff := Day(s.opts.Now().UTC().AddDate(0, 0, -(days - 1)))
	res, err := s.db.ExecContext(ctx, "DELETE FROM decisions WHERE day < ?", cutoff)
	if err != nil {
		return fmt.Errorf("dropping old history days: %w", err)
	}
	if n, _ := res.RowsAffected(); n > 0 {
		if err := s.compactLocked(ctx); err != nil {
			return err
		}
	}
	return s.enforceSizeLocked(ctx)
}
