package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Status is what a gateway says about itself in status/<node>.
type Status struct {
	Node string `json:"node"`
	// PolicyRevision is the shared revision in force on the node; 0
	// before it applied one.
	PolicyRevision int64  `json:"policy_revision"`
	PolicySHA256   string `json:"policy_sha256,omitempty"`
	// RejectedRevision is the newest shared revision the node refused,
	// if it is newer than the one in force; LastError says why (or what
	// else went wrong last).
	RejectedRevision int64  `json:"rejected_revision,omitempty"`
	LastError        string `json:"last_error,omitempty"`
	// Learned is how many learned addresses the node enforces.
	Learned int       `json:"learned"`
	Started time.Time `json:"started"`
	// Updated is when the node last wrote its status: its heartbeat.
	Updated time.Time `json:"updated"`
	Version string    `json:"version"`
}

// errTaken is the error of a status key held under another lease.
var errTaken = errors.New("status key taken")

// member is what members/<node> holds.
type member struct {
	Node    string    `json:"node"`
	Started time.Time `json:"started"`
}

// Announcer keeps a node's status key in etcd, bound to a lease it renews:
// when the node stops (or is killed) the key expires and the fleet sees the
// node gone.
type Announcer struct {
	cli  *clientv3.Client
	keys Keys
	node string
	// Status returns the node's status; Node and Updated are filled in.
	status   func() Status
	ttl      int64
	interval time.Duration
	now      func() time.Time
	poke     chan struct{}

	mu  sync.Mutex // guards following
	err error      // the last write's, nil when it succeeded
}

// AnnouncerOptions configure an Announcer.
type AnnouncerOptions struct {
	Prefix string
	Node   string
	// Status returns the node's status; it is called for every write.
	Status func() Status
	// Interval is how often the status is written and the lease renewed.
	// If zero, 2s.
	Interval time.Duration
	// TTL is the lease's time to live: how long after its last renewal a
	// stopped node's key disappears. If zero, 5 intervals; at least 2s.
	TTL time.Duration
}

// NewAnnouncer returns an announcer; Run writes.
func NewAnnouncer(cli *clientv3.Client, o AnnouncerOptions) *Announcer {
	if o.Interval <= 0 {
		o.Interval = 2 * time.Second
	}
	if o.TTL <= 0 {
		o.TTL = 5 * o.Interval
	}
	ttl := int64(o.TTL.Round(time.Second) / time.Second)
	ttl = max(ttl, 2)
	return &Announcer{
		cli: cli, keys: Keys{o.Prefix}, node: o.Node, status: o.Status,
		ttl: ttl, interval: o.Interval, now: time.Now, poke: make(chan struct{}, 1),
	}
}

// Poke asks for the status to be written now (after a revision applied,
// say) rather than at the next interval.
func (a *Announcer) Poke() {
	select {
	case a.poke <- struct{}{}:
	default:
	}
}

// Err returns the last write's error: nil while etcd takes the status.
func (a *Announcer) Err() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.err
}

// Run writes the status every interval and on Poke until ctx is done, then
// revokes the lease so that the key goes at once. It returns nil; etcd's
// failures are kept for Err, and Run keeps trying.
func (a *Announcer) Run(ctx context.Context) error {
	var lease clientv3.LeaseID
	registered := false
	t := time.NewTicker(a.interval)
	defer t.Stop()
	// A gateway restarted after kill -9 finds its previous run's key,
	// which expires within a TTL: until then that is expected, and no
	// reason to report etcd degraded. A twin's key never expires.
	grace := a.now().Add(time.Duration(a.ttl)*time.Second + 2*a.interval)
	for {
		var err error
		if !registered {
			err = a.register(ctx)
			registered = err == nil
		}
		if err == nil {
			lease, err = a.write(ctx, lease)
		}
		if errors.Is(err, errTaken) && a.now().Before(grace) {
			err = nil
		}
		a.mu.Lock()
		a.err = err
		a.mu.Unlock()
		select {
		case <-ctx.Done():
			if lease != 0 {
				rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
				_, _ = a.cli.Revoke(rctx, lease)
				cancel()
			}
			return nil
		case <-t.C:
		case <-a.poke:
		}
	}
}

// register records the node under members/, so that fleet status can tell
// a node that stopped from one that never was.
func (a *Announcer) register(ctx context.Context) error {
	b, err := json.Marshal(member{Node: a.node, Started: a.now().UTC()})
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, a.interval+DialTimeout)
	defer cancel()
	if _, err := a.cli.Put(wctx, a.keys.member(a.node), string(b)); err != nil {
		return unreachable("registering this node in etcd", err)
	}
	return nil
}

// write renews lease (granting one if there is none or it expired) and
// writes the status under it.
func (a *Announcer) write(ctx context.Context, lease clientv3.LeaseID) (clientv3.LeaseID, error) {
	wctx, cancel := context.WithTimeout(ctx, a.interval+DialTimeout)
	defer cancel()
	if lease != 0 {
		if _, err := a.cli.KeepAliveOnce(wctx, lease); errors.Is(err, rpctypes.ErrLeaseNotFound) {
			lease = 0 // expired while etcd could not be reached
		} else if err != nil {
			return lease, unreachable("renewing this node's status lease", err)
		}
	}
	if lease == 0 {
		g, err := a.cli.Grant(wctx, a.ttl)
		if err != nil {
			return 0, unreachable("granting this node's status lease", err)
		}
		lease = g.ID
	}
	st := a.status()
	st.Node, st.Updated = a.node, a.now().UTC()
	b, err := json.Marshal(st)
	if err != nil {
		return lease, fmt.Errorf("encoding the status: %w", err)
	}
	// The key is this gateway's if it holds it under its lease, or if
	// nobody does; under another lease it is another gateway's with the
	// same node name (or this one's previous run, until its lease
	// expires), whose status and watermark this one would overwrite.
	key := a.keys.status(a.node)
	put := clientv3.OpPut(key, string(b), clientv3.WithLease(lease))
	resp, err := a.cli.Txn(wctx).If(
		clientv3.Compare(clientv3.LeaseValue(key), "=", lease),
	).Then(put).Else(
		clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(key), "=", 0)}, []clientv3.Op{put}, nil),
	).Commit()
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return 0, unreachable("writing this node's status (its lease expired; the next write takes a new one)", err)
	} else if err != nil {
		return lease, unreachable("writing this node's status", err)
	}
	if !resp.Succeeded && !resp.Responses[0].GetResponseTxn().Succeeded {
		return lease, fmt.Errorf("%w: another gateway holds node name %q in etcd (or this gateway's previous run does, until its lease expires); give each gateway its own cluster.node", errTaken, a.node)
	}
	return lease, nil
}
