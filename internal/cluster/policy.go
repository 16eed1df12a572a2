package cluster

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/fqdngate/fqdngate/internal/policy"
)

// MaxPolicySize bounds a shared revision's content: etcd refuses
// requests over 1.5 MiB by default, and the record adds its metadata.
const MaxPolicySize = 1 << 20

// Revision is one revision of the shared policy.
type Revision struct {
	Number int64 `json:"revision"`
	// SHA256 is the hex SHA-256 of Content; a revision whose content does
	// not match it is refused as corrupt.
	SHA256  string    `json:"sha256"`
	Author  string    `json:"author"`
	Created time.Time `json:"created"`
	// Source is the file it was pushed from, as given to push.
	Source string `json:"source,omitempty"`
	// RollbackOf is the revision whose content a rollback copied.
	RollbackOf int64  `json:"rollback_of,omitempty"`
	Message    string `json:"message,omitempty"`
	// Content is the shared half of the policy, YAML.
	Content string `json:"content,omitempty"`
}

// Name is how errors in the revision are positioned: "shared revision
// 7:12:3: ...".
func (r Revision) Name() string { return fmt.Sprintf("shared revision %d", r.Number) }

// Document returns the revision as a policy document for policy.Compose.
func (r Revision) Document() policy.Source {
	return policy.Source{Name: r.Name(), Data: []byte(r.Content)}
}

// Sum returns the hex SHA-256 the revision of content carries.
func Sum(content []byte) string {
	s := sha256.Sum256(content)
	return hex.EncodeToString(s[:])
}

// Store keeps the shared policy's revisions under a prefix.
type Store struct {
	cli  *clientv3.Client
	keys Keys
	keep int64 // revisions a push keeps, the new one included; 0: all
}

// NewStore returns the store of the fleet under prefix. It keeps every
// revision pushed through it, unless KeepLast bounds the history.
func NewStore(cli *clientv3.Client, prefix string) *Store {
	return &Store{cli: cli, keys: Keys{prefix}}
}

// KeepLast makes every push through s keep only the newest n revisions,
// the new one included (cluster.history_keep): the older ones are deleted
// in the transaction that stores it. n 0 keeps them all. It returns s.
func (s *Store) KeepLast(n int64) *Store {
	s.keep = max(n, 0)
	return s
}

// ErrNoRevision is returned when the fleet has no shared policy yet.
var ErrNoRevision = errors.New("no shared policy has been pushed yet; push one with fqdngate policy push")

// ErrBadRevision is wrapped by the errors of a revision that exists (or is
// named current) but cannot be used: a record that does not decode, that
// names another number, whose content does not match its checksum, or
// that is missing. Other errors are etcd's, and pass.
var ErrBadRevision = errors.New("bad shared revision")

func bad(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrBadRevision}, args...)...)
}

// Current returns the revision in force: the one policy/current names.
func (s *Store) Current(ctx context.Context) (Revision, error) {
	r, _, err := s.current(ctx)
	return r, err
}

// current also returns the etcd revision the answer was read at, from
// which a watch continues.
func (s *Store) current(ctx context.Context) (Revision, int64, error) {
	resp, err := s.cli.Get(ctx, s.keys.current())
	if err != nil {
		return Revision{}, 0, unreachable("reading the shared policy's current revision", err)
	}
	at := resp.Header.Revision
	if len(resp.Kvs) == 0 {
		return Revision{}, at, ErrNoRevision
	}
	n, err := parseNumber(resp.Kvs[0].Value)
	if err != nil {
		return Revision{}, at, err
	}
	r, err := s.get(ctx, n, at)
	return r, at, err
}

func parseNumber(v []byte) (int64, error) {
	n, err := strconv.ParseInt(string(v), 10, 64)
	if err != nil || n < 1 {
		return 0, bad("the shared policy's current revision %.40q is not a revision number; push the policy again", v)
	}
	return n, nil
}

// Get returns revision n.
func (s *Store) Get(ctx context.Context, n int64) (Revision, error) {
	return s.get(ctx, n, 0)
}

// get reads revision n as of the etcd revision at (0: the latest) and
// checks that it is whole.
func (s *Store) get(ctx context.Context, n, at int64) (Revision, error) {
	var opts []clientv3.OpOption
	if at > 0 {
		opts = append(opts, clientv3.WithRev(at))
	}
	resp, err := s.cli.Get(ctx, s.keys.revision(n), opts...)
	if err != nil {
		return Revision{}, unreachable(fmt.Sprintf("reading shared revision %d", n), err)
	}
	if len(resp.Kvs) == 0 {
		if oldest, err := s.Oldest(ctx); err == nil && oldest > n {
			return Revision{Number: n}, bad("shared revision %d was pruned: the fleet keeps the newest revisions only (cluster.history_keep), from %d on; fqdngate policy history lists them", n, oldest)
		}
		return Revision{Number: n}, bad("shared revision %d does not exist; fqdngate policy history lists the revisions", n)
	}
	return decodeRevision(n, resp.Kvs[0].Value)
}

// Oldest returns the number of the oldest revision etcd keeps (0: none):
// the ones before it were pruned (see KeepLast).
func (s *Store) Oldest(ctx context.Context) (int64, error) {
	resp, err := s.cli.Get(ctx, s.keys.revision(0), clientv3.WithRange(clientv3.GetPrefixRangeEnd(s.keys.revisions())),
		clientv3.WithLimit(1), clientv3.WithKeysOnly())
	if err != nil {
		return 0, unreachable("reading the shared policy's history", err)
	}
	if len(resp.Kvs) == 0 {
		return 0, nil
	}
	n, err := strconv.ParseInt(string(resp.Kvs[0].Key[len(s.keys.revisions()):]), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("reading the shared policy's history: %q is not a revision key", resp.Kvs[0].Key)
	}
	return n, nil
}

// decodeRevision decodes and checks the record of revision n: a record
// that does not decode, names another number or whose content does not
// match its checksum is refused, never applied.
func decodeRevision(n int64, v []byte) (Revision, error) {
	var r Revision
	if err := json.Unmarshal(v, &r); err != nil {
		return Revision{Number: n}, bad("shared revision %d is not a revision record (%v); push the policy again", n, err)
	}
	if r.Number != n {
		return Revision{Number: n}, bad("shared revision %d's record says it is revision %d; push the policy again", n, r.Number)
	}
	if got := Sum([]byte(r.Content)); got != r.SHA256 {
		return Revision{Number: n}, bad("shared revision %d's content does not match its sha256 (record %.12s, content %.12s); push the policy again", n, r.SHA256, got)
	}
	return r, nil
}

// Push is a new revision to store.
type Push struct {
	Content []byte
	Author  string
	Source  string
	Message string
	// RollbackOf is set by Rollback.
	RollbackOf int64
}

// Push stores p as the next revision and makes it current, unless the
// current revision has the same content: then it returns that revision
// and created false. The caller checks the content first (as fqdngate
// check does); the store only keeps it. Two pushes at once both land, one
// after the other. With KeepLast, the same transaction deletes the
// revisions the new one pushes out of the history.
func (s *Store) Push(ctx context.Context, p Push) (r Revision, created bool, err error) {
	if len(p.Content) > MaxPolicySize {
		return Revision{}, false, fmt.Errorf("the shared policy is %d bytes, more than etcd takes in one revision (%d); split long lists or move comments out", len(p.Content), MaxPolicySize)
	}
	if !utf8.Valid(p.Content) {
		// JSON would replace the bad bytes, and the record would no
		// longer match its checksum.
		return Revision{}, false, errors.New("the shared policy is not UTF-8 text; save it as UTF-8")
	}
	sum := Sum(p.Content)
	for range 10 {
		resp, err := s.cli.Get(ctx, s.keys.current())
		if err != nil {
			return Revision{}, false, unreachable("reading the shared policy's current revision", err)
		}
		var cur, modRev int64
		if len(resp.Kvs) > 0 {
			modRev = resp.Kvs[0].ModRevision
			if cur, err = parseNumber(resp.Kvs[0].Value); err != nil {
				return Revision{}, false, err
			}
			if old, err := s.get(ctx, cur, resp.Header.Revision); err == nil && old.SHA256 == sum {
				return old, false, nil
			}
		}
		r = Revision{
			Number: cur + 1, SHA256: sum, Author: p.Author, Created: time.Now().UTC().Truncate(time.Second),
			Source: p.Source, Message: p.Message, RollbackOf: p.RollbackOf, Content: string(p.Content),
		}
		rec, err := json.Marshal(r)
		if err != nil {
			return Revision{}, false, err
		}
		ops := []clientv3.Op{
			clientv3.OpPut(s.keys.revision(r.Number), string(rec)),
			clientv3.OpPut(s.keys.current(), strconv.FormatInt(r.Number, 10)),
		}
		if s.keep > 0 && r.Number > s.keep {
			// Revision keys are zero-padded: key order is number order,
			// and one range delete takes every revision older than the
			// newest keep.
			ops = append(ops, clientv3.OpDelete(s.keys.revision(0), clientv3.WithRange(s.keys.revision(r.Number-s.keep+1))))
		}
		// Only if nobody pushed meanwhile, and never over an existing
		// revision.
		txn, err := s.cli.Txn(ctx).If(
			clientv3.Compare(clientv3.ModRevision(s.keys.current()), "=", modRev),
			clientv3.Compare(clientv3.CreateRevision(s.keys.revision(r.Number)), "=", 0),
		).Then(ops...).Commit()
		if err != nil {
			return Revision{}, false, unreachable("storing the shared policy", err)
		}
		if txn.Succeeded {
			return r, true, nil
		}
	}
	return Revision{}, false, errors.New("storing the shared policy: other pushes kept landing first; try again")
}

// History returns up to limit revisions, newest first, without their
// content.
func (s *Store) History(ctx context.Context, limit int64) ([]Revision, error) {
	resp, err := s.cli.Get(ctx, s.keys.revisions(), clientv3.WithPrefix(),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend), clientv3.WithLimit(limit))
	if err != nil {
		return nil, unreachable("reading the shared policy's history", err)
	}
	out := make([]Revision, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		n, err := strconv.ParseInt(string(kv.Key[len(s.keys.revisions()):]), 10, 64)
		if err != nil {
			continue // not a revision key: nothing fqdngate wrote
		}
		r, err := decodeRevision(n, kv.Value)
		if err != nil {
			r = Revision{Number: n, Message: "unreadable: " + err.Error()}
		}
		r.Content = ""
		out = append(out, r)
	}
	return out, nil
}

// Rollback makes the content of revision n current again, as a new
// revision (the history never goes back; KeepLast prunes its far end).
// check vets the content first, as a push's is: a revision that no longer
// composes with this gateway's local file is refused. A revision pruned
// from the history is refused as such.
func (s *Store) Rollback(ctx context.Context, n int64, author string, check func(policy.Source) error) (Revision, bool, error) {
	old, err := s.Get(ctx, n)
	if err != nil {
		return Revision{}, false, err
	}
	if check != nil {
		if err := check(old.Document()); err != nil {
			return Revision{}, false, err
		}
	}
	return s.Push(ctx, Push{
		Content: []byte(old.Content), Author: author, Source: old.Source,
		Message: fmt.Sprintf("rollback to revision %d", n), RollbackOf: n,
	})
}

// Watch calls apply with the revision in force and then with every
// revision that becomes current, until ctx is done. A revision that cannot
// be used comes with its error (wrapping ErrBadRevision, with its number
// when known), so the caller can report it and keep what it has. While
// etcd is unreachable or has no leader Watch keeps trying; onErr, if not
// nil, hears each such failure and, with nil, each recovery.
func (s *Store) Watch(ctx context.Context, apply func(Revision, error), onErr func(error)) {
	report := func(err error) {
		if onErr != nil {
			onErr(err)
		}
	}
	var last int64 // the revision number last delivered
	deliver := func(r Revision, err error) {
		if err == nil && r.Number == last {
			return
		}
		if r.Number != 0 {
			last = r.Number
		}
		apply(r, err)
	}
	const minBackoff = 100 * time.Millisecond
	backoff := minBackoff
	for {
		rctx, cancel := context.WithTimeout(ctx, DialTimeout)
		r, at, err := s.current(rctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		switch {
		case errors.Is(err, ErrNoRevision):
			report(nil)
		case err != nil && !errors.Is(err, ErrBadRevision):
			report(err)
		default:
			report(nil)
			deliver(r, err)
		}
		if err == nil || errors.Is(err, ErrNoRevision) || errors.Is(err, ErrBadRevision) {
			backoff = minBackoff
			if ferr := s.follow(ctx, at+1, deliver); ferr != nil {
				report(ferr)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// follow watches policy/current from the etcd revision from on. It returns
// when the watch ends (compaction, lost leader, a revision etcd did not
// hand over, ctx done), with the reason; Watch then reads the current
// revision afresh.
func (s *Store) follow(ctx context.Context, from int64, deliver func(Revision, error)) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for wr := range s.cli.Watch(wctx, s.keys.current(), clientv3.WithRev(from)) {
		if err := wr.Err(); err != nil {
			return unreachable("watching the shared policy", err)
		}
		for _, ev := range wr.Events {
			if ev.Type != clientv3.EventTypePut {
				continue // a deleted current key keeps the revision in force
			}
			n, err := parseNumber(ev.Kv.Value)
			if err != nil {
				deliver(Revision{}, err)
				continue
			}
			gctx, gcancel := context.WithTimeout(ctx, DialTimeout)
			r, err := s.get(gctx, n, ev.Kv.ModRevision)
			gcancel()
			if err != nil && !errors.Is(err, ErrBadRevision) {
				return err
			}
			deliver(r, err)
		}
	}
	return ctx.Err()
}
