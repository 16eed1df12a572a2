// Package nft enforces a policy in the kernel: it owns one nftables table
// whose sets hold the addresses the DNS firewall learned, and whose chains
// drop everything else from the sources the policy covers. The table
// outlives the process; while the process runs, it watches the table and
// puts it back when another process changes it (watch.go), and it keeps
// learned addresses in a state file for the next start (state.go), with
// a journal of the changes since it was written (journal.go).
package nft

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/fqdngate/fqdngate/internal/dnsname"
	"github.com/fqdngate/fqdngate/internal/policy"
)

// Config is what the backend needs besides the policy. The zero value of
// each optional field is useful and documented. What a reload may change
// (mode, listeners, transparent ports) is not here: Apply reads it from
// the policy it is given.
type Config struct {
	// Table is the name of the inet table fqdngate owns. Required.
	Table string
	// Hook is fixed for the backend's life: the daemon refuses a reload
	// that changes firewall.hook.
	Hook policy.Hook

	// StateFile keeps learned addresses across restarts. If empty,
	// learned addresses survive only in the kernel. CheckStateFile says
	// whether it can be written; SetStateFile changes it.
	StateFile string
	// Watch makes the backend watch its table from New on, and Run put
	// it back, with every learned element, as soon as another process
	// deletes or changes it (see watch.go). The daemon sets it; fqdngate
	// firewall show and remove, and tests that break the table on
	// purpose, do not.
	Watch bool
	// NetNSFd, if not 0, is a network namespace file descriptor to work
	// in instead of the current one (tests).
	NetNSFd int
	// LogGroup is the nflog group that receives a rate-limited sample of
	// the packets default deny drops (or, in audit mode, would drop); 0
	// means DefaultLogGroup. LogRate is the sample's packets per second;
	// 0 means 10.
	LogGroup uint16
	LogRate  uint32
	// OnDrop, if not nil, is called from Run for each sampled drop of a
	// TCP or UDP packet: the daemon turns it into an audit record (deny,
	// or would-deny in audit mode). It must not block for long: samples
	// that arrive meanwhile queue in the socket, and are lost (counted in
	// Stats) when it fills. If nil, Run does not read the samples.
	OnDrop func(src, dst netip.Addr, proto policy.Proto, port uint16)
	// AllowLogGroup is the nflog group of the allow log
	// (firewall.log_allowed); 0 means DefaultAllowLogGroup.
	AllowLogGroup uint16
	// OnAllow, if not nil, is called from Run for each new connection an
	// accept rule logged (the policy's firewall.log_allowed decides which):
	// the daemon turns it into an audit record. Like OnDrop it must not
	// block for long; what overflows the socket is lost and counted. If
	// nil, Run does not read the allow log.
	OnAllow func(Allowed)
	// Logger, if nil, discards.
	Logger *slog.Logger
	// Now, if nil, is time.Now; tests move the clock.
	Now func() time.Time
}

// DefaultLogGroup is the nflog group of the drop sample when
// Config.LogGroup is 0: "fq" in ASCII, to stay clear of the low numbers
// other tools (ulogd's examples use 0-2) are configured with.
const DefaultLogGroup = 0x6671

func (c *Config) logGroup() uint16 {
	if c.LogGroup == 0 {
		return DefaultLogGroup
	}
	return c.LogGroup
}

func (c *Config) logRate() uint32 {
	if c.LogRate == 0 {
		return 10
	}
	return c.LogRate
}

// defaultPerName is dns.max_learned_per_name's default, for a backend
// that has not applied a policy yet.
const defaultPerName = 1000

// ErrNoCapability is returned by New when the process may not program
// nftables.
var ErrNoCapability = errors.New("nftables backend needs CAP_NET_ADMIN: run as root or grant the capability; or set firewall.backend: none")

// Backend owns the table. Apply, Publish, Show and Remove are safe for
// concurrent use; Publish fails once Run has returned.
type Backend struct {
	cfg   Config
	log   *slog.Logger
	now   func() time.Time
	table *nftables.Table
	// boot and netns identify the kernel's numbering of handles (see
	// stateIdent).
	boot  string
	netns uint64
	// kick wakes Run to lead the flush (see lead).
	kick chan struct{}
	// stop is closed when Run returns; running makes Run single-use.
	stop    chan struct{}
	running atomic.Bool

	qMu sync.Mutex // guards following
	// pending are the requests waiting for a transaction, bounded by the
	// Publish calls waiting for them; flushing says some call leads.
	pending  []*request
	flushing bool

	nlMu sync.Mutex // guards following, and serializes netlink transactions
	conn *nftables.Conn
	// connRaw is conn's socket, to drain what a failed transaction left
	// (see drainLocked).
	connRaw syscall.RawConn
	rcvBuf  int // connRaw's receive buffer as last set (fitAcks)
	// elems programs learned elements (the hot path); tx is its scratch.
	elems *elemConn
	tx    txScratch
	// sets are the table's sets as last applied or adopted, by name.
	sets map[string]*nftables.Set
	// saved is the state file read at New, until the first Apply
	// restores from it what the sets it makes anew lack (the elements of
	// the sets that New took from it, or that the kernel kept, are left
	// out).
	saved *state
	// toVerify counts the elements adopt took from the state file: Run
	// checks them (see verify). Set by New only.
	toVerify int
	restored bool
	// applied is what the last Apply committed, with the pod sets as
	// SetMembers last left them: what the watcher puts back. nil before
	// the first Apply and after Remove. appliedPolicy is the policy of
	// that Apply, whose pod snapshots SetMembers takes.
	applied       *desired
	appliedPolicy *policy.Policy
	// adoptedPods are the pod sets' contents the table had when it was
	// adopted, by set name: until the first synced snapshot, an Apply
	// keeps them instead of emptying the sets (see keepAdoptedPods).
	adoptedPods map[string][]netip.Addr
	// shape is the table's structure as the last commit left it (see
	// shapeLocked), for the watcher's periodic check; "" if unknown.
	shape string
	// drops adds up the drop counters commits reset (see Drops).
	drops dropCounts
	// query reads the table's structure for the watcher (nil unless
	// Config.Watch); ports are the netlink ports of conn and elems, whose
	// transactions are the backend's own.
	query *netlink.Conn
	ports []uint32
	// info reads set dumps, the table's handles (see adopt and
	// refreshIdentLocked) and the elements verify checks.
	info *netlink.Conn

	memMu sync.Mutex // guards following; never held across netlink I/O
	// learned maps rule×group×family to the name of its set.
	learned map[learnKey]string
	// owner is the inverse of learned, for the state file.
	owner map[string]learnKey
	// known is, by set and address, what the kernel's learned sets hold
	// (the mirror: until when, see mirrorGet) and how many names hold each
	// element (see ref): one map for both, since there is an entry per
	// learned address. The mirror lets a re-learned address that is
	// already programmed long enough skip netlink altogether. programmed
	// counts the entries the mirror holds.
	known      map[elemKey]elemState
	programmed int
	// ident is what the kernel calls the table and the learned sets the
	// mirror is of, for the state file.
	ident kernelIdent
	dirty bool // mirror changed since the state file was written
	// changes are the changes of the mirror since the last save, for the
	// state file's journal, while journaling (see noteLocked); spare is
	// the slice of the last append, for reuse.
	changes, spare []journalRec
	journaling     bool
	// names holds, per name, the elements its answers brought and until
	// when (for the per-name cap). Adopted and restored elements are held
	// by no name.
	names   map[dnsname.Name]*held
	perName int // dns.max_learned_per_name of the applied policy

	// replaceToExtend: the kernel ignores a new timeout on an element it
	// holds (before Linux 6.10), so extending one takes a delete and an
	// add in one transaction.
	replaceToExtend bool

	// nflog is the drop sample's socket, if Config.OnDrop is set and the
	// group could be bound; Run reads it. closeNflog closes it once.
	nflog      *netlink.Conn
	closeNflog func()
	// allowNflog is the allow log's socket, if Config.OnAllow is set and
	// the group could be bound; allowNames resolves its prefixes.
	allowNflog      *netlink.Conn
	closeAllowNflog func()
	allowNames      atomic.Pointer[allowNames]

	// mon is the watcher's subscription to nftables changes, if
	// Config.Watch; closeMon closes it once. wake wakes the watcher.
	mon      *monitor
	closeMon func()
	monReads atomic.Uint64 // datagrams the monitor read: what its filter let through
	wake     chan struct{}
	watchMu  sync.Mutex // guards following
	// bad is what another process did to the table, from the moment the
	// watcher saw it until the table is put back; nil while the table is
	// as the backend programmed it.
	bad    *tamper
	badSeq uint64
	// lastRestoreLog rate-limits the restore warning (see restoredLocked).
	lastRestoreLog time.Time
	quietRestores  int
	// overrun: notifications were lost; the watcher checks everything.
	overrun bool
	// commits are the backend's table commits whose NEWGEN the monitor
	// has yet to read, oldest first: true for a rebuild (see
	// noteNotifications).
	commits []bool

	stateMu sync.Mutex // guards following, and serializes writes (see save)
	// statePath is where the state file is written; stateErr the
	// condition of the last write ("" if it succeeded).
	statePath string
	stateErr  string
	// jw is the state file's journal, appended to by save.
	jw journalWriter

	capEvictions, dropSamples, dropSamplesLost atomic.Uint64
	// restores counts the times the watcher (or an Apply) put the table
	// back after someone else changed it; restoreFailures the attempts
	// that failed; stateWriteFailures the failed writes of the state file.
	// watchOverruns counts the times the watcher lost notifications.
	restores, restoreFailures, stateWriteFailures, watchOverruns atomic.Uint64
	allowLogs, allowLogsLost                                     atomic.Uint64
	// resets counts the times learned elements went from the kernel
	// wholesale: sets deleted by Apply (a rule or group removed or
	// changed), or the table deleted by Remove. A table someone else
	// deleted comes back with its elements, so it does not count.
	resets                atomic.Uint64
	retriedWithoutDeletes atomic.Uint64 // for tests
	// dumpsInterrupted counts the set dumps at adoption the kernel
	// flagged interrupted (NLM_F_DUMP_INTR), each dumped again.
	dumpsInterrupted atomic.Uint64
	// verified counts the elements taken from the state file that verify
	// checked against the kernel; verifyMissing, those it found missing.
	verified, verifyMissing atomic.Uint64

	// breakApply, if set, adds a failing message to Apply's transaction
	// (tests: a netlink failure must leave the old table intact).
	breakApply func(*nftables.Conn)
	// beforeRead, if set, runs before the watcher waits for notifications
	// (tests: holding it lets the monitor's buffer overflow).
	beforeRead func()
}

// New connects to nftables and adopts the table if a previous process left
// one: until the first Apply the old rules, and their learned addresses,
// stay in force. With Config.Watch it subscribes to nftables changes
// before it reads the table, so that nothing another process does after
// that goes unseen.
func New(cfg Config) (*Backend, error) {
	if cfg.Table == "" {
		return nil, errors.New("nftables backend: firewall.table is empty; name the table fqdngate may own")
	}
	b := &Backend{
		cfg:       cfg,
		log:       cfg.Logger,
		now:       cfg.Now,
		table:     &nftables.Table{Name: cfg.Table, Family: nftables.TableFamilyINet},
		kick:      make(chan struct{}, 1),
		stop:      make(chan struct{}),
		wake:      make(chan struct{}, 1),
		sets:      make(map[string]*nftables.Set),
		learned:   make(map[learnKey]string),
		owner:     make(map[string]learnKey),
		known:     make(map[elemKey]elemState),
		names:     make(map[dnsname.Name]*held),
		perName:   defaultPerName,
		statePath: cfg.StateFile,
		// Without a release to read, assume an old kernel: a delete and
		// an add extend an element on every kernel.
		replaceToExtend: !timeoutUpdates(kernelRelease()),
		closeNflog:      func() {},
		closeAllowNflog: func() {},
		closeMon:        func() {},
		boot:            bootID(),
		netns:           netnsIno(cfg.NetNSFd),
	}
	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}
	if b.now == nil {
		b.now = time.Now
	}
	var connPort uint32
	opts := []nftables.ConnOption{nftables.AsLasting(), nftables.WithSockOptions(func(c *netlink.Conn) error {
		// A restore puts the whole table back, learned elements and
		// all, in one transaction: one sendmsg, and an acknowledgement
		// per message.
		raw, err := c.SyscallConn()
		if err != nil {
			return err
		}
		setBuffer(raw, unix.SO_SNDBUFFORCE, unix.SO_SNDBUF, 64<<20)
		setBuffer(raw, unix.SO_RCVBUFFORCE, unix.SO_RCVBUF, minRcvBuf)
		b.connRaw, b.rcvBuf = raw, minRcvBuf
		connPort, err = netlinkPort(c)
		return err
	})}
	if cfg.NetNSFd != 0 {
		opts = append(opts, nftables.WithNetNSFd(cfg.NetNSFd))
	}
	conn, err := nftables.New(opts...)
	if err != nil {
		return nil, netlinkErr("opening netlink", err)
	}
	b.conn = conn
	if b.elems, err = openElemConn(cfg.NetNSFd, cfg.Table); err != nil {
		conn.CloseLasting()
		return nil, err
	}
	b.elems.expiration = !b.replaceToExtend
	fail := func(err error) (*Backend, error) {
		b.closeMon()
		if b.query != nil {
			b.query.Close()
		}
		if b.info != nil {
			b.info.Close()
		}
		b.elems.Close()
		conn.CloseLasting()
		return nil, err
	}
	if b.info, err = netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: cfg.NetNSFd}); err != nil {
		return fail(netlinkErr("opening netlink", err))
	}
	if cfg.Watch {
		elemsPort, err := netlinkPort(b.elems.c)
		if err != nil {
			return fail(netlinkErr("opening netlink", err))
		}
		b.ports = []uint32{connPort, elemsPort}
		if b.query, err = netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: cfg.NetNSFd}); err != nil {
			return fail(netlinkErr("opening netlink", err))
		}
		mon, err := openMonitor(cfg.NetNSFd, connPort, elemsPort, cfg.Table)
		if err != nil {
			return fail(err)
		}
		b.mon, b.closeMon = mon, sync.OnceFunc(func() { mon.Close() })
	}
	var saved *state
	if cfg.StateFile != "" {
		saved = b.loadState(cfg.StateFile)
	}
	if err := b.adopt(saved); err != nil {
		return fail(err)
	}
	b.saved = saved
	if cfg.OnDrop != nil {
		// Bound now, not in Run, so no drop after New goes unsampled.
		if c, err := openNflog(cfg.NetNSFd, cfg.logGroup()); err != nil {
			// Enforcement does not depend on it; the counters still count.
			b.log.Warn("drops will not reach the audit log", "err", err)
		} else {
			b.nflog, b.closeNflog = c, sync.OnceFunc(func() { c.Close() })
		}
	}
	if cfg.OnAllow != nil {
		if c, err := openNflog(cfg.NetNSFd, cfg.allowLogGroup()); err != nil {
			b.log.Warn("allowed connections will not reach the audit log", "err", err)
		} else {
			b.allowNflog, b.closeAllowNflog = c, sync.OnceFunc(func() { c.Close() })
		}
	}
	return b, nil
}

// loadState reads the state file's entries, with the changes its journal
// adds; a lost state file costs re-resolution, not safety, and a lost
// journal, the changes since the snapshot.
func (b *Backend) loadState(path string) *state {
	st, err := readState(path)
	if err != nil {
		b.log.Warn("ignoring unreadable state file", "file", path, "err", err)
		return nil
	}
	switch n, err := readJournal(path, st); {
	case errors.Is(err, errJournalOther):
		b.log.Info("ignoring the state file's journal: it is of an older or newer state file (fqdngate stopped between writing the two)", "file", journalPath(path))
	case err != nil:
		b.log.Warn("ignoring the state file's journal: the state file is taken as it is, without the changes written since", "file", journalPath(path), "err", err)
	case n > 0:
		b.log.Info("read the state file's journal", "file", journalPath(path), "changes", n)
	}
	return st
}

// Close releases the netlink connections. The table stays: enforcement
// outlives the process.
func (b *Backend) Close() error {
	b.closeNflog()
	b.closeMon()
	b.closeAllowNflog()
	b.nlMu.Lock()
	defer b.nlMu.Unlock()
	var qerr error
	if b.query != nil {
		qerr = b.query.Close()
	}
	return errors.Join(b.elems.Close(), b.conn.CloseLasting(), qerr, b.info.Close())
}

// netlinkErr turns permission failures into ErrNoCapability.
func netlinkErr(doing string, err error) error {
	if errors.Is(err, os.ErrPermission) || errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) {
		return ErrNoCapability
	}
	return fmt.Errorf("nftables: %s: %w", doing, err)
}

// Installed reports whether the table exists.
func (b *Backend) Installed() (bool, error) {
	b.nlMu.Lock()
	defer b.nlMu.Unlock()
	return b.tableExistsLocked()
}

func (b *Backend) tableExistsLocked() (bool, error) {
	tables, err := b.conn.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, netlinkErr("listing tables", err)
	}
	for _, t := range tables {
		if t.Name == b.cfg.Table {
			return true, nil
		}
	}
	return false, nil
}

// maxDumpTries bounds the dumps of one set at adoption when the kernel
// flags them interrupted.
const maxDumpTries = 3

// adopt reads an existing table's sets and learned elements, with the
// time each has left. A learned set that the state file st was written
// from (the same set, by its handle: see stateIdent) is taken from the
// file: the kernel kept its elements, and the file says until when, for
// the ones the previous process knew when it last wrote the file. Its
// elements are checked against the kernel after the start (see verify).
// Any other learned set is dumped: the kernel reports each element's
// time left (NFTA_SET_ELEM_EXPIRATION). A dump costs time that grows
// with the square of the set's size (see BENCHMARKS.md), the file only
// with its size.
func (b *Backend) adopt(st *state) error {
	b.nlMu.Lock()
	defer b.nlMu.Unlock()
	// Listing needs CAP_NET_ADMIN too, so this is also the capability check.
	found, err := b.tableExistsLocked()
	if err != nil || !found {
		return err
	}
	sets, err := b.conn.GetSets(b.table)
	if err != nil {
		return netlinkErr("listing sets of table "+b.cfg.Table, err)
	}
	b.refreshIdentLocked()
	b.memMu.Lock()
	trusted := st.trusted(&b.ident)
	b.memMu.Unlock()
	now := b.now()
	n, fromFile := 0, 0
	taken := make(map[int32]family) // the file's sets adopt takes, by index
	for _, s := range sets {
		b.sets[s.Name] = s
		if isPodSetName(s.Name) && !s.HasTimeout && !s.Interval {
			if err := b.adoptPodSetLocked(s); err != nil {
				return err
			}
			continue
		}
		if !s.HasTimeout {
			continue
		}
		if i, ok := trusted[s.Name]; ok && !s.Interval {
			switch s.KeyType.Name {
			case nftables.TypeIPAddr.Name:
				taken[i] = v4
				continue
			case nftables.TypeIP6Addr.Name:
				taken[i] = v6
				continue
			}
		}
		// An interrupted dump may miss elements: dump again, and keep
		// every element any dump listed (one that went meanwhile has
		// its expiry, or is deleted again by the next Apply's diff).
		for try := 1; ; try++ {
			elems, interrupted, err := dumpSetElements(b.info, byte(b.table.Family), b.cfg.Table, s.Name)
			if err != nil {
				return netlinkErr("listing set "+s.Name, err)
			}
			for _, e := range elems {
				a, ok := netip.AddrFromSlice(e.key)
				if !ok || e.expires <= 0 {
					continue
				}
				k := keyOf(s.Name, a)
				if _, dup := b.mirrorGet(k); !dup {
					n++
				}
				b.mirrorSet(k, wallOf(now.Add(e.expires)))
			}
			if !interrupted {
				break
			}
			b.dumpsInterrupted.Add(1)
			if try == maxDumpTries {
				b.log.Warn("the kernel interrupted every dump of a set: learned addresses it did not list are not restored until they are learned again (the kernel keeps enforcing them)", "set", s.Name, "tries", try)
				break
			}
		}
	}
	if st != nil {
		// The file's entries of the sets taken from it go to the mirror,
		// to be checked; the others stay for the first Apply.
		ids := make([]setID, len(st.Sets))
		for i := range taken {
			ids[i] = internSet(st.Sets[i].Name)
		}
		b.memMu.Lock()
		if len(b.known) == 0 && len(taken) > 0 {
			b.known = make(map[elemKey]elemState, len(st.Learned))
		}
		keep := st.Learned[:0]
		for _, e := range st.Learned {
			fam, ok := taken[e.set]
			if !ok {
				keep = append(keep, e)
				continue
			}
			if !e.Expires.After(now) || familyOf(e.Addr()) != fam {
				continue
			}
			if b.mirrorUnverified(elemKey{e.a, ids[e.set]}, e.Expires) {
				n++
				fromFile++
			}
		}
		b.memMu.Unlock()
		st.Learned = slices.Clip(keep)
	}
	b.toVerify = fromFile
	b.log.Info("adopted existing nftables table", "table", b.cfg.Table, "sets", len(sets), "learned", n, "from_state_file", fromFile)
	return nil
}

// trusted returns, by name, the sets of st that are the kernel's sets
// named in id: same boot, namespace and table, and the same set handle.
// A file from another table, boot or namespace, an older file, or one
// written without handles, has none.
func (st *state) trusted(id *kernelIdent) map[string]int32 {
	if st == nil || st.Table == nil || id.table.Boot == "" || *st.Table != id.table {
		return nil
	}
	out := make(map[string]int32, len(st.Sets))
	for i, s := range st.Sets {
		if h, ok := id.sets[s.Name]; ok && s.Name != "" && s.Handle != 0 && s.Handle == h {
			out[s.Name] = int32(i)
		}
	}
	return out
}

// refreshIdentLocked reads what the kernel calls the table and its sets
// now. If it cannot, the state file is written without them, and the
// next start dumps the learned sets.
func (b *Backend) refreshIdentLocked() {
	th, sets, err := queryHandles(b.info, byte(b.table.Family), b.cfg.Table)
	b.memMu.Lock()
	defer b.memMu.Unlock()
	b.ident.gen++
	if err != nil {
		b.ident.table, b.ident.sets = stateIdent{}, nil
		return
	}
	b.ident.table = stateIdent{Boot: b.boot, NetNS: b.netns, Handle: th}
	if b.ident.table.Boot == "" || b.ident.table.NetNS == 0 {
		b.ident.table = stateIdent{}
	}
	b.ident.sets = sets
}

// Apply makes the table enforce p, in one netlink transaction: the kernel
// switches from the old rules to the new ones atomically, and if anything
// fails, keeps the old ones. Learned addresses of rule×group pairs that
// survive are kept. The first Apply also restores the state file's
// entries that the kernel does not hold. A table that is missing, or that
// the watcher saw someone else change, is rebuilt from scratch in the same
// single transaction, with every learned address the backend holds.
func (b *Backend) Apply(ctx context.Context, p *policy.Policy) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d := build(&b.cfg, p)

	b.nlMu.Lock()
	defer b.nlMu.Unlock()
	// The pod sets hold the snapshot current now, under the lock
	// SetMembers takes: the last of the two to run has the newest.
	fillPods(d, p.Members())
	b.keepAdoptedPodsLocked(d, p.Members())
	exists, err := b.tableExistsLocked()
	if err != nil {
		return err
	}
	bad := b.tampered()
	if bad == nil && !exists && len(b.sets) > 0 {
		// Deleted behind fqdngate's back, and no watcher noticed.
		bad = &tamper{what: "table deleted", since: b.now()}
	}
	start := time.Now()
	res, err := b.commitLocked(d, !exists || bad != nil)
	if err != nil {
		return err
	}
	b.appliedPolicy = p
	b.memMu.Lock()
	b.perName = defaultPerName
	if p.DNS.MaxLearnedPerName > 0 {
		b.perName = p.DNS.MaxLearnedPerName
	}
	b.memMu.Unlock()
	b.log.Info("applied policy", "table", b.cfg.Table, "hook", b.cfg.Hook, "mode", p.Mode, "sets", res.sets, "learned", res.learned, "restored", res.restored)
	if bad != nil {
		b.restoredLocked(bad, res, time.Since(start))
	}
	return nil
}

// applyErr says why the kernel refused a policy's transaction. A kernel
// without `meta time` (before Linux 5.4) refuses an observing group's
// deadline with a bare "operation not supported"; the operator needs to
// know which key of the policy it was.
func applyErr(d *desired, table string, err error) error {
	err = netlinkErr("applying policy to table "+table+" (the previous rules stay in force)", err)
	if errors.Is(err, syscall.EOPNOTSUPP) && d.matches(timeBefore) {
		return fmt.Errorf("%w: observe_until needs a kernel that matches on the time of day (nftables meta time, Linux 5.4 or later); upgrade the kernel, or remove observe_until and let the group enforce", err)
	}
	return err
}

// matches reports whether any rule of d tests kind.
func (d *desired) matches(kind matchKind) bool {
	for _, ch := range d.chains {
		for _, r := range ch.rules {
			for _, m := range r.matches {
				if m.kind == kind {
					return true
				}
			}
		}
	}
	return false
}

// minRcvBuf is the receive buffer of the socket transactions go through:
// room for the acknowledgements of about 8,000 messages.
const minRcvBuf = 8 << 20

// ackRoom is what one acknowledgement takes of a socket's receive buffer
// (its buffer's true size, not its 36 bytes), as nft reckons it.
const ackRoom = 1024

// maxRcvBuf bounds what fitAcks asks of the kernel: 256 MiB, the
// acknowledgements of some 40,000 rules, whose transaction would take
// minutes (BENCHMARKS.md). A larger one fails with ENOBUFS, and the rules
// in force stay.
const maxRcvBuf = 256 << 20

// fitAcks grows the receive buffer of the transaction socket to hold the
// acknowledgements of msgs messages, which the kernel queues while it
// applies the transaction, before any is read: a policy of 4,000 rules
// (some 25,000 messages) overflowed 8 MiB and failed with ENOBUFS. The
// buffer only reserves: memory is taken by what is queued.
func (b *Backend) fitAcks(msgs int) {
	if need := min(msgs*ackRoom, maxRcvBuf); need > b.rcvBuf && b.connRaw != nil {
		setBuffer(b.connRaw, unix.SO_RCVBUFFORCE, unix.SO_RCVBUF, need)
		b.rcvBuf = need
	}
}

// commitResult is what a commit left in the kernel.
type commitResult struct {
	sets int
	// learned counts the live learned elements the kernel holds after
	// the commit; restored, those of them that came from the state file.
	learned, restored int
}

// commitLocked programs d in one transaction. Without rebuild it updates
// the table in place: chains are flushed and refilled, sets whose flags
// changed or whose rule or group went are replaced, and the learned
// elements of the others stay where they are. With rebuild, whatever the
// table holds goes, and the table is programmed from d and the mirror,
// as if new: for a table that is missing or that someone else changed.
func (b *Backend) commitLocked(d *desired, rebuild bool) (commitResult, error) {
	var (
		chains []*nftables.Chain
		err    error
	)
	old := b.sets
	c := b.conn
	if rebuild {
		// Adding first makes the delete valid whether or not the table
		// exists; the kernel sees one transaction, so no packet passes
		// between the old table and the new one.
		c.AddTable(b.table)
		c.DelTable(b.table)
		old = nil
	} else if chains, err = b.listChains(); err != nil {
		return commitResult{}, err
	}
	// The commit replaces every rule, and the drop counters with them:
	// what they hold is kept, added once the commit succeeds. Reading them
	// sends nothing of the transaction. A failed read costs only what they
	// held (Drops never reports less than it did).
	counted, _ := b.readDropsLocked(chains)
	c.AddTable(b.table)
	// Rules go first, so nothing references what is deleted below.
	want := make(map[string]*chainSpec, len(d.chains))
	for i := range d.chains {
		want[d.chains[i].name] = &d.chains[i]
	}
	for _, ch := range chains {
		c.FlushChain(ch)
	}
	for _, ch := range chains {
		if w := want[ch.Name]; w == nil || !sameChain(ch, w) {
			c.DelChain(ch)
		}
	}
	wantSet := make(map[string]*setSpec, len(d.sets))
	for i := range d.sets {
		wantSet[d.sets[i].name] = &d.sets[i]
	}
	sets := make(map[string]*nftables.Set, len(d.sets))
	var dropped []string
	for name, s := range b.sets {
		if w := wantSet[name]; w == nil || !sameSet(s, w) {
			if !rebuild {
				c.DelSet(s)
			}
			dropped = append(dropped, name)
		}
	}
	carried := make(map[string]bool, len(d.sets))
	for i := range d.sets {
		w := &d.sets[i]
		s := newSet(b.table, w)
		elems := staticElements(w)
		if prev := old[w.name]; prev != nil && sameSet(prev, w) {
			if w.static() {
				c.FlushSet(prev)
				if len(elems) > 0 {
					if err := c.SetAddElements(prev, elems); err != nil {
						return commitResult{}, fmt.Errorf("nftables: encoding set %s: %w", w.name, err)
					}
				}
			}
			sets[w.name] = prev
			carried[w.name] = true
			continue
		}
		if err := c.AddSet(s, elems); err != nil {
			return commitResult{}, fmt.Errorf("nftables: encoding set %s: %w", w.name, err)
		}
		sets[w.name] = s
	}
	// Every chain exists before any rule jumps to it.
	made := make([]*nftables.Chain, len(d.chains))
	for i := range d.chains {
		made[i] = c.AddChain(newChain(b.table, &d.chains[i]))
	}
	// msgs bounds the messages of the transaction from above: the kernel
	// acknowledges each, and the acknowledgements must fit the socket's
	// receive buffer while the transaction is read back.
	msgs := 8 + 2*len(chains) + len(b.sets) + 3*len(d.sets)
	for i := range d.chains {
		for _, r := range d.chains[i].rules {
			c.AddRule(&nftables.Rule{Table: b.table, Chain: made[i], Exprs: r.exprs(sets), UserData: commentData(r.comment)})
			msgs++
		}
	}
	elems, fromState := b.learnedElementsLocked(d, sets, carried, rebuild)
	for name, es := range elems {
		for len(es) > 0 {
			n := min(len(es), maxPerMsg)
			if err := c.SetAddElements(sets[name], es[:n]); err != nil {
				return commitResult{}, fmt.Errorf("nftables: encoding set %s: %w", name, err)
			}
			es = es[n:]
			msgs++
		}
	}
	b.fitAcks(msgs)
	if b.breakApply != nil {
		b.breakApply(c)
	}
	b.expectCommit(rebuild)
	if len(dropped) > 0 {
		// Elements go with their sets, before their expiry: Dropped must
		// move before they do (a spurious move on failure costs only a
		// publication).
		b.resets.Add(1)
	}
	if err := c.Flush(); err != nil {
		// The kernel aborted the whole transaction: the old table stands.
		// Re-read it so the next attempt diffs against the truth.
		b.forgetCommit()
		b.drainLocked()
		b.resyncLocked()
		if errors.Is(err, syscall.EPERM) && rebuild {
			return commitResult{}, fmt.Errorf("nftables: the kernel refused to replace table inet %s (%w): another process may own a table of that name (nft's owner flag)", b.cfg.Table, err)
		}
		return commitResult{}, applyErr(d, b.cfg.Table, err)
	}
	b.sets = sets
	b.applied = d
	b.drops.base = b.drops.base.plus(counted)
	b.restored = true
	b.saved = nil
	b.setAllowNames(d.allowLog)

	now := b.now()
	b.memMu.Lock()
	b.learned = d.learned
	owner := make(map[string]learnKey, len(d.learned))
	for k, name := range d.learned {
		owner[name] = k
	}
	if !maps.Equal(owner, b.owner) {
		// The state file lists the learned sets: the next save is a
		// snapshot. (A set replaced under its name changes its handle,
		// which starts a snapshot too: see save.)
		b.journaling = false
	}
	b.owner = owner
	for k := range b.mirrorAll {
		if _, ok := b.owner[k.set()]; !ok {
			b.mirrorDel(k)
			b.dirty = true
		}
	}
	if len(dropped) > 0 {
		for name, h := range b.names {
			h.deleteFunc(func(k elemKey, _ int64) bool {
				if _, ok := b.owner[k.set()]; !ok {
					b.unrefLocked(k)
					return true
				}
				return false
			})
			if h.len() == 0 {
				delete(b.names, name)
			}
		}
	}
	for k, exp := range fromState {
		b.mirrorSet(k, wallOf(exp))
		b.dirty = true
	}
	res := commitResult{sets: len(sets), restored: len(fromState)}
	for _, exp := range b.mirrorAll {
		if exp.After(now) {
			res.learned++
		}
	}
	b.memMu.Unlock()
	if rebuild || len(carried) < len(sets) {
		b.refreshIdentLocked()
	}
	b.recordShapeLocked()
	return res, nil
}

// learnedElementsLocked returns the learned elements a commit adds: with
// rebuild, every live element of the mirror whose set d keeps, each with
// the time it has left; and, on the first commit, the state file's live
// entries for the learned sets the commit makes anew (fromState, with
// their expiries): a set the table kept holds what the kernel kept, which
// adopt took from the kernel or from this very file.
func (b *Backend) learnedElementsLocked(d *desired, sets map[string]*nftables.Set, carried map[string]bool, rebuild bool) (map[string][]nftables.SetElement, map[elemKey]time.Time) {
	now := b.now()
	out := make(map[string][]nftables.SetElement)
	kept := make(map[string]bool, len(d.learned))
	for _, name := range d.learned {
		kept[name] = sets[name] != nil
	}
	add := func(k elemKey, exp time.Time) bool {
		// Round up: an element must not expire before its answer.
		ttl := (exp.Sub(now) + time.Millisecond - 1).Truncate(time.Millisecond)
		if ttl <= 0 || !kept[k.set()] {
			return false
		}
		out[k.set()] = append(out[k.set()], nftables.SetElement{Key: k.addr().AsSlice(), Timeout: ttl})
		return true
	}
	b.memMu.Lock()
	defer b.memMu.Unlock()
	if rebuild {
		for k, exp := range b.mirrorAll {
			add(k, exp.Time())
		}
	}
	var fromState map[elemKey]time.Time
	if !b.restored && b.saved != nil {
		fromState = make(map[elemKey]time.Time)
		for _, e := range b.saved.Learned {
			set := &b.saved.Sets[e.set]
			name, ok := d.learned[learnKey{set.Rule, set.Group, familyOf(e.Addr())}]
			if !ok || (carried[name] && !rebuild) {
				continue
			}
			k := keyOf(name, e.Addr())
			if exp, held := b.mirrorGet(k); held && exp.After(now) && rebuild {
				continue // added above
			}
			if _, dup := fromState[k]; dup || e.Expires.Sub(now) < time.Millisecond {
				continue
			}
			if add(k, e.Expires.Time()) {
				fromState[k] = e.Expires.Time()
			}
		}
	}
	return out, fromState
}

// drainLocked discards the replies a failed transaction left on conn's
// socket. The kernel acknowledges every message of a batch, and reports
// every error, before sendmsg returns; nftables.Conn.Flush stops reading
// at the first EPERM, and the next transaction would read the rest as its
// own.
func (b *Backend) drainLocked() {
	buf := make([]byte, 64<<10)
	for {
		var rerr error
		err := b.connRaw.Read(func(fd uintptr) bool {
			_, _, rerr = unix.Recvfrom(int(fd), buf, unix.MSG_DONTWAIT)
			return true
		})
		if err != nil || rerr == unix.EAGAIN || (rerr != nil && rerr != unix.ENOBUFS) {
			return
		}
	}
}

// resyncLocked reloads the kernel's sets after a failed transaction.
func (b *Backend) resyncLocked() {
	sets, err := b.conn.GetSets(b.table)
	if err != nil {
		return
	}
	b.sets = make(map[string]*nftables.Set, len(sets))
	for _, s := range sets {
		b.sets[s.Name] = s
	}
}

func (b *Backend) listChains() ([]*nftables.Chain, error) {
	all, err := b.conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, netlinkErr("listing chains", err)
	}
	var out []*nftables.Chain
	for _, ch := range all {
		if ch.Table.Name == b.cfg.Table {
			out = append(out, ch)
		}
	}
	return out, nil
}

var hookNums = map[string]nftables.ChainHook{
	"output":     *nftables.ChainHookOutput,
	"forward":    *nftables.ChainHookForward,
	"prerouting": *nftables.ChainHookPrerouting,
	"input":      *nftables.ChainHookInput,
}

func newChain(t *nftables.Table, w *chainSpec) *nftables.Chain {
	ch := &nftables.Chain{Name: w.name, Table: t}
	if w.hook == "" {
		return ch
	}
	h := hookNums[w.hook]
	accept := nftables.ChainPolicyAccept
	ch.Hooknum, ch.Policy, ch.Type, ch.Priority = &h, &accept, nftables.ChainTypeFilter, nftables.ChainPriorityFilter
	if w.prio != 0 {
		ch.Priority = nftables.ChainPriorityRef(nftables.ChainPriority(w.prio))
	}
	if w.nat {
		ch.Type = nftables.ChainTypeNAT
		if w.prio == 0 {
			ch.Priority = nftables.ChainPriorityNATDest
		}
	}
	return ch
}

// sameChain reports whether the kernel's chain can be updated in place
// into w; a base chain cannot change hook or type.
func sameChain(ch *nftables.Chain, w *chainSpec) bool {
	want := newChain(ch.Table, w)
	if (ch.Hooknum == nil) != (want.Hooknum == nil) {
		return false
	}
	if ch.Hooknum == nil {
		return true
	}
	return *ch.Hooknum == *want.Hooknum && ch.Type == want.Type && ch.Priority != nil && *ch.Priority == *want.Priority
}

func newSet(t *nftables.Table, w *setSpec) *nftables.Set {
	s := &nftables.Set{Table: t, Name: w.name, KeyType: nftables.TypeIPAddr, Interval: w.interval(), HasTimeout: !w.static()}
	if w.fam == v6 {
		s.KeyType = nftables.TypeIP6Addr
	}
	if w.kind == ifnameSet {
		// A string: nft reads the elements back in host order only if
		// the set says so.
		s.KeyType, s.KeyByteOrder = nftables.TypeIFName, binaryutil.NativeEndian
	}
	return s
}

// sameSet reports whether the kernel's set has the flags and type w needs.
func sameSet(s *nftables.Set, w *setSpec) bool {
	want := newSet(s.Table, w)
	return s.KeyType.Name == want.KeyType.Name && s.Interval == want.Interval && s.HasTimeout == want.HasTimeout
}

// staticElements encodes a static set's contents: interface names, or
// address ranges.
func staticElements(w *setSpec) []nftables.SetElement {
	switch w.kind {
	case ifnameSet:
		return ifnameElements(w.ifnames)
	case podSet:
		return addrElements(w.addrs)
	}
	return intervalElements(w)
}

// intervalElements encodes a static set's ranges: each starts with its first
// address and ends, flagged, one past its last, except at the top of the
// address space, where the open end is implied.
func intervalElements(w *setSpec) []nftables.SetElement {
	if !w.interval() {
		return nil
	}
	var out []nftables.SetElement
	for _, r := range ranges(w.prefixes) {
		out = append(out, nftables.SetElement{Key: r.lo.AsSlice()})
		if end := r.hi.Next(); end.IsValid() {
			out = append(out, nftables.SetElement{Key: end.AsSlice(), IntervalEnd: true})
		}
	}
	return out
}

// ruleComment is NFTNL_UDATA_RULE_COMMENT, which the userdata package
// does not name.
const ruleComment userdata.Type = 0

// commentData encodes a rule comment the way nft does, so `nft list` shows
// it. Userdata lengths are one byte, hence the cut.
func commentData(s string) []byte {
	if s == "" {
		return nil
	}
	if len(s) > 120 {
		s = s[:120]
	}
	return userdata.AppendString(nil, ruleComment, s)
}

// Remove deletes the table: fqdngate stops enforcing. The state file is
// left alone. A backend's own Remove is not a change its watcher undoes.
func (b *Backend) Remove() error {
	b.nlMu.Lock()
	defer b.nlMu.Unlock()
	b.conn.DelTable(b.table)
	b.expectCommit(false)
	if err := b.conn.Flush(); err != nil {
		b.forgetCommit()
		b.drainLocked()
		if !errors.Is(err, syscall.ENOENT) {
			return netlinkErr("deleting table "+b.cfg.Table, err)
		}
	}
	b.sets = make(map[string]*nftables.Set)
	b.applied, b.appliedPolicy, b.shape = nil, nil, "" // nothing for the watcher to put back
	b.clearTamper(nil)
	b.memMu.Lock()
	b.ident = kernelIdent{gen: b.ident.gen + 1}
	clear(b.known)
	b.programmed = 0
	clear(b.names)
	b.memMu.Unlock()
	b.resets.Add(1)
	return nil
}

// Render returns, in nft syntax, the table Apply would program for p. It
// touches nothing (for fqdngate run --dry-run).
func Render(cfg Config, p *policy.Policy) string {
	return build(&cfg, p).render(cfg.Table)
}
