package e2e

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/testutil/certs"
	"github.com/fqdngate/fqdngate/internal/testutil/netns"
)

// The fleet topology: two gateways on one client subnet, as a VRRP pair or
// an ECMP pool has them, and an etcd cluster they share (documentation
// ranges only):
//
//	client ──┐                      ┌── gateway A ──┐
//	etcd  ───┤ lan 192.0.2.0/25     │               ├── wan 192.0.2.128/25 ── internet
//	         │     2001:db8:c::/64  │               │     2001:db8:e::/64
//	         └──────────────────────┴── gateway B ──┘
//
// Both segments are bridges in a switch namespace. The client asks
// gateway A for DNS (fleetDNS) and routes everything through gateway B, so
// an answer given by A must be enforced by B; the internet routes the
// client subnet back through B. The etcd members listen on the lan.
const (
	fleetA4     = "192.0.2.1"
	fleetB4     = "192.0.2.2"
	fleetAWan4  = "192.0.2.129"
	fleetBWan4  = "192.0.2.131"
	fleetA6     = "2001:db8:c::1"
	fleetB6     = "2001:db8:c::2"
	fleetAWan6  = "2001:db8:e::1"
	fleetBWan6  = "2001:db8:e::3"
	fleetDNS    = fleetA4 + ":53"
	etcdMember0 = "192.0.2.101"
)

// fleetNet is the fleet topology.
type fleetNet struct {
	sw, client, a, b, etcd *netns.NS
	inet                   *internet
}

func newFleetNet(t *testing.T) *fleetNet {
	t.Helper()
	n := &fleetNet{sw: netns.New(t), client: netns.New(t), a: netns.New(t), b: netns.New(t), etcd: netns.New(t)}
	in := &internet{ns: netns.New(t), auth: newAuthority(), ca: certs.NewCA(t)}
	n.inet = in
	for _, br := range []string{"lan", "wan"} {
		n.sw.IP("link", "add", br, "type", "bridge")
		n.sw.IP("link", "set", br, "up")
	}
	port := func(ns *netns.NS, dev, sw, br string) {
		netns.Veth(t, n.sw, sw, ns, dev)
		n.sw.IP("link", "set", sw, "master", br)
	}
	port(n.client, "c0", "lc", "lan")
	port(n.etcd, "e0", "le", "lan")
	port(n.a, "g0", "la", "lan")
	port(n.b, "g0", "lb", "lan")
	port(n.a, "g1", "wa", "wan")
	port(n.b, "g1", "wb", "wan")
	port(in.ns, "i0", "wi", "wan")

	for _, a := range []string{srcA + "/25", srcB + "/25", srcA6 + "/64", srcB6 + "/64"} {
		n.client.Addr("c0", a)
	}
	n.client.Route("default", fleetB4)
	n.client.Route("default", fleetB6)
	for i := range 3 {
		n.etcd.Addr("e0", etcdMemberAddr(i)+"/25")
	}
	n.etcd.Route("default", fleetA4) // unused: etcd talks on the lan only
	n.a.Addr("g0", fleetA4+"/25")
	n.a.Addr("g0", fleetA6+"/64")
	n.b.Addr("g0", fleetB4+"/25")
	n.b.Addr("g0", fleetB6+"/64")
	n.a.Addr("g1", fleetAWan4+"/25")
	n.a.Addr("g1", fleetAWan6+"/64")
	n.b.Addr("g1", fleetBWan4+"/25")
	n.b.Addr("g1", fleetBWan6+"/64")
	for _, gw := range []*netns.NS{n.a, n.b} {
		gw.Route("default", inet4)
		gw.Route("default", inet6)
		gw.Forwarding()
	}
	// The internet's way back to the client subnet is through B.
	in.serve(t, fleetBWan4, fleetBWan6)
	return n
}

// etcdMemberAddr is member i's address on the lan.
func etcdMemberAddr(i int) string { return fmt.Sprintf("192.0.2.%d", 101+i) }

// etcdCluster is Debian's etcd binary, one process per member, in the
// etcd namespace, serving clients and peers over TLS with client
// certificates, as docs/fleet.md asks of production.
type etcdCluster struct {
	t       *testing.T
	ns      *netns.NS
	dir     string
	members []*etcdMember

	CA                 *certs.CA
	CAFile             string
	memberCert, memKey string
}

type etcdMember struct {
	name, addr, dir string
	cmd             *exec.Cmd
	exited          chan struct{}
	log             syncBuffer
}

// startEtcd starts an etcd cluster of size members in ns and waits until
// every member is healthy. It skips the test, or fails it under CI, if
// the etcd binary is missing.
func startEtcd(t *testing.T, ns *netns.NS, size int) *etcdCluster {
	t.Helper()
	if _, err := exec.LookPath("etcd"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs the etcd binary (Debian package etcd-server), and CI=true forbids skipping")
		}
		t.Skip("needs the etcd binary: apt-get install etcd-server")
	}
	c := &etcdCluster{t: t, ns: ns, dir: t.TempDir(), CA: certs.NewCA(t)}
	c.CAFile = c.CA.WriteFile(t)
	hosts := []string{"etcd"}
	for i := range size {
		hosts = append(hosts, etcdMemberAddr(i))
	}
	c.memberCert, c.memKey = c.CA.LeafFiles(t, hosts...)
	var initial []string
	for i := range size {
		m := &etcdMember{name: fmt.Sprintf("m%d", i), addr: etcdMemberAddr(i)}
		m.dir = filepath.Join(c.dir, m.name)
		c.members = append(c.members, m)
		initial = append(initial, m.name+"=https://"+m.addr+":2380")
	}
	for _, m := range c.members {
		c.start(m, strings.Join(initial, ","), "new")
	}
	t.Cleanup(func() {
		for i := range c.members {
			c.Stop(i)
		}
	})
	for i := range c.members {
		c.waitHealthy(i)
	}
	return c
}

func (c *etcdCluster) start(m *etcdMember, initial, state string) {
	c.t.Helper()
	client := "https://" + m.addr + ":2379"
	peer := "https://" + m.addr + ":2380"
	m.cmd = exec.Command("ip", "netns", "exec", c.ns.Name, "etcd",
		"--name", m.name,
		"--data-dir", m.dir,
		"--listen-client-urls", client,
		"--advertise-client-urls", client,
		"--listen-peer-urls", peer,
		"--initial-advertise-peer-urls", peer,
		"--initial-cluster", initial,
		"--initial-cluster-state", state,
		"--initial-cluster-token", "fqdngate-e2e",
		"--cert-file", c.memberCert, "--key-file", c.memKey,
		"--client-cert-auth", "--trusted-ca-file", c.CAFile,
		"--peer-cert-file", c.memberCert, "--peer-key-file", c.memKey,
		"--peer-client-cert-auth", "--peer-trusted-ca-file", c.CAFile,
		"--log-level", "warn",
	)
	m.cmd.Stdout = &m.log
	m.cmd.Stderr = &m.log
	if err := m.cmd.Start(); err != nil {
		c.t.Fatalf("starting etcd member %s: %v", m.name, err)
	}
	m.exited = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) {
		_ = cmd.Wait()
		close(done)
	}(m.cmd, m.exited)
}

// Endpoints lists the members' client URLs.
func (c *etcdCluster) Endpoints() []string {
	var out []string
	for _, m := range c.members {
		out = append(out, "https://"+m.addr+":2379")
	}
	return out
}

// Stop kills member i (SIGKILL, as a crash) and waits until it is gone.
func (c *etcdCluster) Stop(i int) {
	m := c.members[i]
	if m.cmd == nil {
		return
	}
	_ = m.cmd.Process.Kill()
	<-m.exited
	m.cmd = nil
}

// Restart starts member i again on its data and waits until it is
// healthy (which needs a quorum).
func (c *etcdCluster) Restart(i int) {
	c.t.Helper()
	c.StartAgain(i)
	c.waitHealthy(i)
}

// StartAgain starts member i again on its data without waiting: a member
// is healthy only with a quorum, which several restarts may need
// together.
func (c *etcdCluster) StartAgain(i int) {
	c.t.Helper()
	var initial []string
	for _, m := range c.members {
		initial = append(initial, m.name+"=https://"+m.addr+":2380")
	}
	c.start(c.members[i], strings.Join(initial, ","), "existing")
}

// Leader returns the index of the member that leads the cluster now, as
// the running members report it (etcd's gRPC gateway,
// /v3/maintenance/status).
func (c *etcdCluster) Leader() int {
	c.t.Helper()
	ids := make(map[string]int) // member id -> index
	var leader string
	for i, m := range c.members {
		if m.cmd == nil {
			continue
		}
		resp, err := c.httpClient().Post("https://"+m.addr+":2379/v3/maintenance/status", "application/json", strings.NewReader("{}"))
		if err != nil {
			c.t.Fatalf("etcd status of %s: %v", m.name, err)
		}
		var st struct {
			Header struct {
				MemberID string `json:"member_id"`
			} `json:"header"`
			Leader string `json:"leader"`
		}
		err = json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if err != nil {
			c.t.Fatalf("etcd status of %s: %v", m.name, err)
		}
		ids[st.Header.MemberID] = i
		if leader == "" {
			leader = st.Leader
		}
	}
	i, ok := ids[leader]
	if !ok {
		c.t.Fatalf("etcd: the leader %q is none of the running members %v", leader, ids)
	}
	return i
}

// httpClient reaches the members over TLS from the etcd namespace.
func (c *etcdCluster) httpClient() *http.Client {
	cert, err := tls.LoadX509KeyPair(c.memberCert, c.memKey)
	if err != nil {
		c.t.Fatal(err)
	}
	return &http.Client{
		Timeout: time.Second,
		Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: c.CA.Pool(), Certificates: []tls.Certificate{cert}},
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return c.ns.DialWith(&net.Dialer{Timeout: time.Second}, network, addr)
			},
			DisableKeepAlives: true,
		},
	}
}

// waitHealthy polls member i's /health from the etcd namespace.
func (c *etcdCluster) waitHealthy(i int) {
	c.t.Helper()
	m := c.members[i]
	hc := c.httpClient()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := hc.Get("https://" + m.addr + ":2379/health")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if strings.Contains(string(body), `"health":"true"`) {
				return
			}
			err = fmt.Errorf("%s: %s", resp.Status, body)
		}
		select {
		case <-m.exited:
			c.t.Fatalf("etcd member %s exited: %s", m.name, m.log.String())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("etcd member %s not healthy after 30s: %v\n%s", m.name, err, m.log.String())
		}
	}
}
