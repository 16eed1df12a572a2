package fleet

import (
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fqdngate/fqdngate/internal/learn"
)

// Hold says when an answer whose addresses this gateway learned may go to
// the client.
type Hold uint8

const (
	// HoldPeers: once every live gateway has the addresses in its kernel
	// (acknowledged through etcd), or Options.HoldTimeout has passed.
	HoldPeers Hold = iota
	// HoldLocal: once this gateway has; the others get them
	// asynchronously.
	HoldLocal
)

func (h Hold) String() string { return [...]string{"peers", "local"}[h] }

// OnTimeout is what happens to an answer whose hold times out.
type OnTimeout uint8

const (
	// Release: the answer goes to the client (counted and logged); a
	// connection through a gateway that lags may be dropped.
	Release OnTimeout = iota
	// ServFail: Publish fails, so the DNS firewall answers SERVFAIL and
	// the client retries.
	ServFail
)

func (o OnTimeout) String() string { return [...]string{"release", "servfail"}[o] }

// Options configure a Fleet. Zero fields take the defaults noted.
type Options struct {
	// Prefix is where the fleet's keys live in etcd; default "/fqdngate/".
	Prefix string
	// Node names this gateway among the fleet's; required, unique.
	Node string
	// Hold and HoldTimeout (default 250ms) say when Publish returns; see
	// Hold. OnTimeout is what a hold that times out does.
	Hold        Hold
	HoldTimeout time.Duration
	OnTimeout   OnTimeout

	// Local enforces on this gateway: the nftables backend, or a
	// learn.Store. Required. Publish calls it first; elements from etcd
	// are programmed through it too.
	Local learn.Publisher
	// Accept checks each element read from etcd before it is programmed
	// (see the package function Accept); an error ignores the element,
	// counted by its Refusal's reason. Required: without a check, etcd
	// could open whatever it holds. SetAccept replaces it on reload.
	Accept func(learn.Entry) error
	// MaxPerName bounds the elements of one name taken from etcd
	// (dns.max_learned_per_name); 0: no bound here (the local publisher
	// still applies its own).
	MaxPerName int

	// Released, if not nil, is told of every answer a hold released
	// after HoldTimeout (OnTimeout Release) before every gateway
	// acknowledged it: batch is the answer's elements (not to be kept),
	// why says who lagged. The daemon audits it.
	Released func(batch []learn.Entry, why string)

	// Logger receives the fleet's operational messages; nil: none.
	Logger *slog.Logger
	// Registerer receives the fqdngate_fleet_* series; nil: not
	// registered.
	Registerer prometheus.Registerer

	// NodeTTL is the lease of this gateway's watermark key: a gateway
	// that stops (kill -9, lost network) stops being waited for this
	// long after its last keepalive. Default 5s; etcd rounds up to whole
	// seconds and imposes its own minimum.
	NodeTTL time.Duration
	// Bucket is the width of the expiry buckets that learned elements
	// share leases by; default 60s.
	Bucket time.Duration
	// WriteTimeout bounds each etcd request; one that fails or takes
	// longer puts the fleet in degraded mode until a probe succeeds.
	// Default 2s.
	WriteTimeout time.Duration
	// ProbeEvery is how often the connection to etcd is checked (a
	// linearizable read, which needs a quorum), and how often a degraded
	// fleet tries to reconnect; default 1s.
	ProbeEvery time.Duration
	// MaxPending bounds the elements waiting to be written to etcd (while
	// degraded, say); beyond it new ones are enforced locally only, and
	// counted. Default 100,000.
	MaxPending int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

const (
	defaultPrefix      = "/fqdngate/"
	defaultHoldTimeout = 250 * time.Millisecond
	defaultNodeTTL     = 5 * time.Second
	defaultBucket      = 60 * time.Second
	defaultWrite       = 2 * time.Second
	defaultProbe       = time.Second
	defaultMaxPending  = 100_000
	// maxInflight bounds the transactions of learned elements in flight
	// at once; all but one of them full (see flushLoop).
	maxInflight = 4
	// leaseSlack: a bucket's lease outlives the bucket's last expiry by
	// this much, so that an element is never deleted before it expires.
	leaseSlack = 10 * time.Second
)

func (o *Options) setDefaults() {
	if o.Prefix == "" {
		o.Prefix = defaultPrefix
	}
	if o.HoldTimeout <= 0 {
		o.HoldTimeout = defaultHoldTimeout
	}
	if o.NodeTTL <= 0 {
		o.NodeTTL = defaultNodeTTL
	}
	if o.Bucket <= 0 {
		o.Bucket = defaultBucket
	}
	o.Bucket = max(o.Bucket, time.Second) // leases are whole seconds
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = defaultWrite
	}
	if o.ProbeEvery <= 0 {
		o.ProbeEvery = defaultProbe
	}
	if o.MaxPending <= 0 {
		o.MaxPending = defaultMaxPending
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}
