// Package etcdtest starts real etcd clusters inside the test process, on
// loopback ports the test picks, for tests of code that keeps state in etcd.
package etcdtest

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// startTimeout bounds how long a cluster may take to elect a leader. The
// test machines are small and loaded; an election takes a second or two.
const startTimeout = 60 * time.Second

// Cluster is an embedded etcd cluster of one or more members, each with its
// own data directory under t.TempDir() and its own loopback ports. Members
// can be stopped and restarted (with their data) to play outages. It is
// stopped when the test ends.
type Cluster struct {
	t       testing.TB
	cfgs    []memberConfig
	initial string // the initial-cluster flag: every member's peer URL
	opts    []Option
	mu      sync.Mutex // guards members
	members []*embed.Etcd
}

// memberConfig is what a member needs to start again as itself.
type memberConfig struct {
	name, dir          string
	peerURL, clientURL url.URL
}

// Option changes how the members of a cluster run.
type Option func(*embed.Config)

// NoFsync runs the members without fsync (etcd's --unsafe-no-fsync), for
// benchmarks that compare etcd's cost with and without the disk's. A
// member's data survives Stop and Restart, not a crash of the machine.
func NoFsync() Option { return func(c *embed.Config) { c.UnsafeNoFsync = true } }

// Start starts a cluster of members members and waits until it has a
// leader. Set FQDNGATE_ETCD_LOG=1 to see the members' logs on stderr.
func Start(t testing.TB, members int, opts ...Option) *Cluster {
	t.Helper()
	if members < 1 {
		t.Fatalf("etcdtest: a cluster needs at least one member, not %d", members)
	}
	c := &Cluster{t: t, members: make([]*embed.Etcd, members), opts: opts}
	var peers []string
	urls := freeURLs(t, 2*members)
	for i := range members {
		m := memberConfig{
			name:      fmt.Sprintf("m%d", i),
			dir:       t.TempDir(),
			peerURL:   urls[2*i],
			clientURL: urls[2*i+1],
		}
		c.cfgs = append(c.cfgs, m)
		peers = append(peers, m.name+"="+m.peerURL.String())
	}
	c.initial = strings.Join(peers, ",")
	t.Cleanup(c.stopAll)
	for i := range members {
		c.start(i)
	}
	for i := range members {
		c.waitReady(i)
	}
	return c
}

// freeURLs returns n http URLs on distinct loopback ports that were free a
// moment ago: each port is held until all are picked, so two members never
// get the same one. The ports are below Linux's ephemeral range
// (32768-60999), so that no outgoing connection (the tests' etcd clients
// make many) takes one before etcd listens; another test picking the same
// one first is unlikely, and would fail the test loudly, not silently.
func freeURLs(t testing.TB, n int) []url.URL {
	t.Helper()
	var held []net.Listener
	defer func() {
		for _, l := range held {
			l.Close()
		}
	}()
	urls := make([]url.URL, 0, n)
	for len(urls) < n {
		var l net.Listener
		for range 100 {
			var err error
			if l, err = net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", 20000+rand.IntN(12000))); err == nil {
				break
			}
		}
		if l == nil {
			var err error
			if l, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
				t.Fatalf("etcdtest: finding a free port: %v", err)
			}
		}
		held = append(held, l)
		urls = append(urls, url.URL{Scheme: "http", Host: l.Addr().String()})
	}
	return urls
}

func (c *Cluster) start(i int) {
	c.t.Helper()
	m := c.cfgs[i]
	cfg := embed.NewConfig()
	cfg.Name = m.name
	cfg.Dir = m.dir
	cfg.ListenPeerUrls = []url.URL{m.peerURL}
	cfg.AdvertisePeerUrls = []url.URL{m.peerURL}
	cfg.ListenClientUrls = []url.URL{m.clientURL}
	cfg.AdvertiseClientUrls = []url.URL{m.clientURL}
	cfg.InitialCluster = c.initial
	cfg.InitialClusterToken = "etcdtest"
	// A restarted member finds its data directory and rejoins from its
	// log; the state flag matters only to the first start.
	cfg.ClusterState = embed.ClusterStateFlagNew
	cfg.Logger = "zap"
	if os.Getenv("FQDNGATE_ETCD_LOG") == "1" {
		cfg.LogLevel = "info"
		cfg.LogOutputs = []string{"stderr"}
	} else {
		cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	}
	for _, o := range c.opts {
		o(cfg)
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		c.t.Fatalf("etcdtest: starting member %d: %v", i, err)
	}
	c.mu.Lock()
	c.members[i] = e
	c.mu.Unlock()
}

func (c *Cluster) waitReady(i int) {
	c.t.Helper()
	c.mu.Lock()
	e := c.members[i]
	c.mu.Unlock()
	if e == nil {
		c.t.Fatalf("etcdtest: member %d is stopped", i)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		c.t.Fatalf("etcdtest: member %d failed: %v", i, err)
	case <-time.After(startTimeout):
		c.t.Fatalf("etcdtest: member %d not ready after %v", i, startTimeout)
	}
}

// Endpoints returns the client URLs of every member, running or not, in
// member order.
func (c *Cluster) Endpoints() []string {
	out := make([]string, len(c.cfgs))
	for i, m := range c.cfgs {
		out[i] = m.clientURL.String()
	}
	return out
}

// Endpoint returns member i's client URL.
func (c *Cluster) Endpoint(i int) string { return c.cfgs[i].clientURL.String() }

// Client returns a client of every member, closed when the test ends.
func (c *Cluster) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	return NewClient(t, c.Endpoints()...)
}

// NewClient returns a client of endpoints, closed when the test ends.
func NewClient(t testing.TB, endpoints ...string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatalf("etcdtest: connecting to %v: %v", endpoints, err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// Stop stops member i and waits until it has. Its data stays for
// Restart. Stopping a running member twice is a no-op.
func (c *Cluster) Stop(i int) {
	c.mu.Lock()
	e := c.members[i]
	c.members[i] = nil
	c.mu.Unlock()
	if e != nil {
		e.Close()
	}
}

// Restart starts member i again with its data directory and ports, and
// returns once it listens. It serves requests once a quorum of members
// runs, so it does not wait for that: a test that restarts every member
// waits through its clients.
func (c *Cluster) Restart(i int) {
	c.t.Helper()
	c.mu.Lock()
	running := c.members[i] != nil
	c.mu.Unlock()
	if running {
		c.t.Fatalf("etcdtest: member %d is running; Stop it first", i)
	}
	c.start(i)
}

// WaitReady waits until member i has joined a quorum and serves requests.
func (c *Cluster) WaitReady(i int) {
	c.t.Helper()
	c.waitReady(i)
}

func (c *Cluster) stopAll() {
	for i := range c.cfgs {
		c.Stop(i)
	}
}
