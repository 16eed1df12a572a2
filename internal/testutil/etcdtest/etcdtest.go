// Package etcdtest runs a real etcd cluster inside a test: members embedded
// in the test process, on loopback ports the test picks, with their data
// under t.TempDir().
package etcdtest

import (
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// readyWait bounds a member's (re)start: generous, for -race on a loaded
// machine.
const readyWait = 60 * time.Second

// Cluster is an embedded etcd cluster.
type Cluster struct {
	t       testing.TB
	token   string
	initial string // name=peerURL,...

	mu      sync.Mutex // guards members' etcd
	members []*member
}

type member struct {
	name       string
	dir        string
	peer       url.URL
	client     url.URL
	etcd       *embed.Etcd // nil while stopped
	hasStarted bool
}

// Start starts a cluster of n members and waits until every one serves.
// The cluster stops when the test ends.
func Start(t testing.TB, n int) *Cluster {
	t.Helper()
	c := &Cluster{t: t, token: fmt.Sprintf("etcdtest-%d", time.Now().UnixNano())}
	var initial []string
	for i := range n {
		m := &member{
			name:   fmt.Sprintf("m%d", i),
			dir:    t.TempDir(),
			peer:   url.URL{Scheme: "http", Host: freePort(t)},
			client: url.URL{Scheme: "http", Host: freePort(t)},
		}
		c.members = append(c.members, m)
		initial = append(initial, m.name+"="+m.peer.String())
	}
	c.initial = strings.Join(initial, ",")
	t.Cleanup(func() {
		for i := range c.members {
			c.Stop(i)
		}
	})
	// Members of a new cluster wait for each other: start them all, then
	// wait.
	for i := range c.members {
		c.launch(i)
	}
	for i := range c.members {
		c.waitReady(i)
	}
	return c
}

// Endpoints returns the members' client URLs.
func (c *Cluster) Endpoints() []string {
	out := make([]string, len(c.members))
	for i, m := range c.members {
		out[i] = m.client.String()
	}
	return out
}

// Client returns a client of every member, closed when the test ends.
func (c *Cluster) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   c.Endpoints(),
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// Stop stops member i; stopping a stopped member does nothing.
func (c *Cluster) Stop(i int) {
	c.mu.Lock()
	e := c.members[i].etcd
	c.members[i].etcd = nil
	c.mu.Unlock()
	if e != nil {
		e.Close()
	}
}

// Restart starts member i again with its data. Once a quorum of members
// runs, it waits until every running member serves; before that no member
// can, and it returns at once.
func (c *Cluster) Restart(i int) {
	c.t.Helper()
	c.mu.Lock()
	running := c.members[i].etcd != nil
	c.mu.Unlock()
	if running {
		return
	}
	c.launch(i)
	var up []int
	c.mu.Lock()
	for j, m := range c.members {
		if m.etcd != nil {
			up = append(up, j)
		}
	}
	c.mu.Unlock()
	if 2*len(up) <= len(c.members) {
		return
	}
	for _, j := range up {
		c.waitReady(j)
	}
}

func (c *Cluster) launch(i int) {
	c.t.Helper()
	m := c.members[i]
	cfg := embed.NewConfig()
	cfg.Name = m.name
	cfg.Dir = m.dir
	cfg.ListenPeerUrls = []url.URL{m.peer}
	cfg.AdvertisePeerUrls = []url.URL{m.peer}
	cfg.ListenClientUrls = []url.URL{m.client}
	cfg.AdvertiseClientUrls = []url.URL{m.client}
	cfg.InitialCluster = c.initial
	cfg.InitialClusterToken = c.token
	cfg.ClusterState = embed.ClusterStateFlagNew
	if m.hasStarted {
		cfg.ClusterState = embed.ClusterStateFlagExisting
	}
	cfg.ListenMetricsUrls = nil
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		c.t.Fatalf("starting etcd member %s: %v", m.name, err)
	}
	c.mu.Lock()
	m.etcd, m.hasStarted = e, true
	c.mu.Unlock()
}

func (c *Cluster) waitReady(i int) {
	c.t.Helper()
	c.mu.Lock()
	e := c.members[i].etcd
	c.mu.Unlock()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		c.t.Fatalf("etcd member %s: %v", c.members[i].name, err)
	case <-time.After(readyWait):
		c.t.Fatalf("etcd member %s not ready after %v", c.members[i].name, readyWait)
	}
}

// freePort returns a loopback address whose port was free a moment ago.
func freePort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
