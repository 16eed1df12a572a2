// Package kubetest starts a real Kubernetes API server for tests: Debian's
// etcd and kube-apiserver v1.37.2, as child processes on loopback ports the
// test picks, with their data in the test's temporary directory.
//
// A Server has no kubelets, controllers or scheduler: only the API and its
// storage, authentication (an admin token and ServiceAccount tokens) and RBAC.
// So objects stay as the test writes them. Pods stay where the test puts
// them: a test sets spec.nodeName itself and writes status.podIPs through the
// status subresource (CreatePod does both); a pod on a node that is deleted
// gracefully keeps its deletionTimestamp forever, as no kubelet confirms it,
// so DeletePod deletes at once; a deleted namespace stays Terminating, as no
// namespace controller empties it; no "default" ServiceAccount appears in new
// namespaces, so the ServiceAccount admission plugin, which would refuse pods
// without one, is off.
//
// The kube-apiserver binary is built from the Go module proxy by
// tools/kube-apiserver/build.sh (about 10 minutes on 2 cores the first time;
// .ci/run does it) to $(go env GOPATH)/bin/kube-apiserver; $KUBE_APISERVER
// names another. Without it, or without etcd (apt-get install etcd-server),
// tests skip, saying so; under CI=true they fail instead. Start takes 10 to
// 40 seconds (kube-apiserver bootstraps its RBAC roles and priority levels
// before /readyz says ok), so a package's tests share one Server where they
// can. Set FQDNGATE_KUBE_LOG=1 to see etcd's and kube-apiserver's logs on
// stderr; a failed test logs the last lines of each.
//
// The servers listen on the test's loopback, or, with InNetns, inside a
// network namespace the test made, on an address programs in the test's
// other namespaces reach (the fqdngate binary as a node agent, with a file
// from WriteKubeconfig).
package kubetest

import (
	"context"
	cryptorand "crypto/rand"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/keyutil"

	"github.com/fqdngate/fqdngate/internal/testutil/certs"
	"github.com/fqdngate/fqdngate/internal/testutil/netns"
)

// Version is the kube-apiserver release the tests run against, the release
// of the k8s.io modules in go.mod.
const Version = "v1.37.2"

// ServiceCIDR is the range the server allocates Service cluster IPs from
// (--service-cluster-ip-range): a documentation range, so that no address a
// test sees belongs to a real network. The "kubernetes" Service in the
// default namespace gets its first address, 198.51.100.1.
const ServiceCIDR = "198.51.100.0/24"

const (
	// etcdTimeout bounds how long etcd may take to answer /health.
	etcdTimeout = time.Minute
	// readyTimeout bounds how long kube-apiserver may take to say /readyz
	// ok. It took about 30 s on a loaded 2-core machine.
	readyTimeout = 3 * time.Minute
	// opTimeout bounds each API call a helper makes.
	opTimeout = 30 * time.Second
	// attempts is how often a server is started on new ports when the ones
	// picked were taken between the pick and the server's listen.
	attempts = 3
)

// Server is a running kube-apiserver with its etcd. Everything it started is
// killed when the test that started it ends.
type Server struct {
	// URL is the API server's address, https://127.0.0.1:port, or the
	// address given to InNetns.
	URL string
	// EtcdURL is etcd's client address, http://127.0.0.1:port (in the
	// namespace given to InNetns, if any).
	EtcdURL string

	t          testing.TB // the test that started the server: its end stops it
	dir        string     // kube-apiserver's files: keys, token file, certificates
	args       []string
	binary     string
	adminToken string
	caPEM      []byte // the CA of the server's certificate
	apiserver  *process
	client     *kubernetes.Clientset
	ns         *netns.NS // nil: the test's own network namespace
	addr       netip.Addr
}

// Option changes where Start runs the servers.
type Option func(*Server)

// InNetns runs etcd and kube-apiserver inside network namespace ns, the API
// server listening on addr, an address the test has given to one of ns's
// interfaces, instead of 127.0.0.1. Programs in other namespaces (an agent
// in a node's namespace) then reach it over the links the test made; the
// Server's own clients (Client, Config, ServiceAccountConfig) connect from
// inside ns. etcd listens on ns's loopback.
func InNetns(ns *netns.NS, addr netip.Addr) Option {
	return func(s *Server) { s.ns, s.addr = ns, addr }
}

// Start starts etcd and kube-apiserver and returns once the API server's
// /readyz says ok and its own namespaces (default, kube-system, kube-public,
// kube-node-lease) exist. It skips the test when a binary is missing (fails
// under CI=true).
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	binary := apiserverBinary(t)
	etcdBinary := need(t, "etcd", "", "apt-get install etcd-server")
	s := &Server{t: t, dir: t.TempDir(), binary: binary, adminToken: randomToken(t), addr: netip.MustParseAddr("127.0.0.1")}
	for _, o := range opts {
		o(s)
	}
	s.startEtcd(t, etcdBinary)
	s.writeFiles(t)
	s.startAPIServer(t)
	s.waitSystemNamespaces(t)
	return s
}

// systemNamespaces are the namespaces kube-apiserver creates itself. They
// may appear a moment after /readyz says ok.
var systemNamespaces = []string{"default", "kube-system", "kube-public", "kube-node-lease"}

// waitSystemNamespaces waits until every system namespace exists, so that
// each test starts from the same set of namespaces (a namespace informer's
// first list would otherwise depend on timing).
func (s *Server) waitSystemNamespaces(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(opTimeout)
	for {
		c, cancel := ctx(t)
		list, err := s.client.CoreV1().Namespaces().List(c, metav1.ListOptions{})
		cancel()
		var missing []string
		for _, name := range systemNamespaces {
			if err != nil || !slices.ContainsFunc(list.Items, func(ns corev1.Namespace) bool { return ns.Name == name }) {
				missing = append(missing, name)
			}
		}
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("kubetest: namespaces %v missing %v after /readyz said ok (last error: %v)", missing, opTimeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// apiserverBinary finds kube-apiserver: $KUBE_APISERVER, else the path
// tools/kube-apiserver/build.sh writes.
func apiserverBinary(t testing.TB) string {
	t.Helper()
	path := os.Getenv("KUBE_APISERVER")
	how := "KUBE_APISERVER names no file: unset it, or build one there with tools/kube-apiserver/build.sh " + path
	if path == "" {
		gopath, err := exec.Command("go", "env", "GOPATH").Output()
		if err != nil {
			t.Fatalf("kubetest: finding GOPATH to find kube-apiserver (go env GOPATH): %v; set KUBE_APISERVER instead", err)
		}
		path = filepath.Join(strings.TrimSpace(string(gopath)), "bin", "kube-apiserver")
		how = "run tools/kube-apiserver/build.sh (about 10 minutes the first time), or set KUBE_APISERVER"
	}
	path = need(t, "kube-apiserver", path, how)
	checkVersion(t, path)
	return path
}

// checkVersion fails the test when the binary at path is not kube-apiserver
// Version: the tests' client-go and their expectations follow that release.
func checkVersion(t testing.TB, path string) {
	t.Helper()
	out, err := exec.Command(path, "--version").Output()
	if got := strings.TrimSpace(string(out)); err != nil || got != "Kubernetes "+Version {
		t.Fatalf("kubetest: %s --version: got %q (%v), want %q; run tools/kube-apiserver/build.sh to build it again", path, got, err, "Kubernetes "+Version)
	}
}

// need returns the path of a binary (looked up in $PATH when path is empty),
// or skips the test saying how to get it (fails under CI=true).
func need(t testing.TB, name, path, how string) string {
	t.Helper()
	var err error
	if path == "" {
		path, err = exec.LookPath(name)
	} else {
		_, err = os.Stat(path)
	}
	if err == nil {
		return path
	}
	msg := fmt.Sprintf("kubetest: needs %s (%v): %s", name, err, how)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + "; CI=true forbids skipping")
	}
	t.Skip(msg)
	return ""
}

func (s *Server) startEtcd(t testing.TB, binary string) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		client, peer := "http://"+freeAddr(t), "http://"+freeAddr(t)
		p, err := startProcess(s.ns, "etcd", filepath.Join(s.dir, fmt.Sprintf("etcd-%d.log", attempt)), binary,
			"--name", "kubetest",
			"--data-dir", filepath.Join(t.TempDir(), "etcd"),
			"--listen-client-urls", client,
			"--advertise-client-urls", client,
			"--listen-peer-urls", peer,
			"--initial-advertise-peer-urls", peer,
			"--initial-cluster", "kubetest="+peer,
			"--initial-cluster-state", "new",
			"--logger", "zap",
			"--log-level", "warn",
		)
		if err != nil {
			t.Fatalf("kubetest: %v", err)
		}
		t.Cleanup(func() { p.reportOnFailure(t); p.stop() })
		err = waitFor(p, etcdTimeout, func() bool { return s.etcdHealthy(client) })
		if err == nil {
			s.EtcdURL = client
			return
		}
		if attempt == attempts || !strings.Contains(p.logTail(20), "address already in use") {
			t.Fatalf("kubetest: etcd on %s: %v\n%s", client, err, p.logTail(40))
		}
		p.stop()
	}
}

func (s *Server) etcdHealthy(url string) bool {
	c := http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: s.dial}}
	defer c.CloseIdleConnections()
	resp, err := c.Get(url + "/health")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// writeFiles writes what kube-apiserver reads at start: its serving
// certificate, the ServiceAccount signing key and the static token file with
// the admin token.
func (s *Server) writeFiles(t testing.TB) {
	t.Helper()
	ca := certs.NewCA(t)
	s.caPEM = ca.PEM
	certFile, keyFile := ca.LeafFiles(t, s.addr.String(), "127.0.0.1", "localhost")
	saKey, err := keyutil.MakeEllipticPrivateKeyPEM()
	if err != nil {
		t.Fatalf("kubetest: making the ServiceAccount signing key: %v", err)
	}
	saKeyFile := filepath.Join(s.dir, "sa.key")
	tokenFile := filepath.Join(s.dir, "tokens.csv")
	// token,user,uid,"groups": system:masters passes every authorization.
	tokens := fmt.Sprintf("%s,kubetest-admin,kubetest-admin,\"system:masters\"\n", s.adminToken)
	for path, data := range map[string][]byte{saKeyFile: saKey, tokenFile: []byte(tokens)} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatalf("kubetest: %v", err)
		}
	}
	s.args = []string{
		"--bind-address=" + s.addr.String(),
		// A loopback advertise address is refused unless the endpoint
		// reconciler, which publishes it as the kubernetes Service's
		// endpoint, is off.
		"--advertise-address=" + s.addr.String(),
		"--endpoint-reconciler-type=none",
		"--etcd-servers=" + s.EtcdURL,
		"--tls-cert-file=" + certFile,
		"--tls-private-key-file=" + keyFile,
		"--cert-dir=" + filepath.Join(s.dir, "certs"),
		"--token-auth-file=" + tokenFile,
		"--service-account-key-file=" + saKeyFile,
		"--service-account-signing-key-file=" + saKeyFile,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--authorization-mode=RBAC",
		"--anonymous-auth=false",
		"--service-cluster-ip-range=" + ServiceCIDR,
		// No controller creates the "default" ServiceAccount of a new
		// namespace, and this plugin refuses pods without it.
		"--disable-admission-plugins=ServiceAccount",
		"--profiling=false",
	}
}

func (s *Server) startAPIServer(t testing.TB) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		_, port, _ := net.SplitHostPort(freeAddr(t))
		s.URL = "https://" + net.JoinHostPort(s.addr.String(), port)
		p, err := startProcess(s.ns, "kube-apiserver", filepath.Join(s.dir, fmt.Sprintf("kube-apiserver-%d.log", attempt)), s.binary,
			append([]string{"--secure-port=" + port}, s.args...)...)
		if err != nil {
			t.Fatalf("kubetest: %v", err)
		}
		t.Cleanup(func() { p.reportOnFailure(t); p.stop() })
		client, err := kubernetes.NewForConfig(s.Config())
		if err != nil {
			t.Fatalf("kubetest: a client of %s: %v", s.URL, err)
		}
		err = waitFor(p, readyTimeout, func() bool { return ready(client) })
		if err == nil {
			s.apiserver, s.client = p, client
			return
		}
		if attempt == attempts || !strings.Contains(p.logTail(20), "address already in use") {
			t.Fatalf("kubetest: kube-apiserver on %s: %v\n%s", s.URL, err, p.logTail(40))
		}
		p.stop()
	}
}

// ready reports whether /readyz says ok: kube-apiserver has reached etcd and
// finished its bootstrap (RBAC roles, priority levels, the kubernetes
// Service).
func ready(client *kubernetes.Clientset) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	body, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
	return err == nil && string(body) == "ok"
}

// waitFor polls cond until it holds, the process exits or timeout passes.
func waitFor(p *process, timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for {
		if !p.running() {
			return fmt.Errorf("%s exited: %v", p.name, p.cmd.ProcessState)
		}
		if cond() {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %v", p.name, timeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Stop kills kube-apiserver, leaving etcd and its data, to play an API
// outage. Clients get connection errors until Restart.
func (s *Server) Stop() { s.apiserver.stop() }

// Restart starts kube-apiserver again after Stop, on the same address and
// with the same etcd, tokens and keys, so the objects, and the tokens issued
// before, are as they were. It returns once /readyz says ok. The server runs
// until the test that started it ends, even when t is one of its subtests.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	if s.apiserver.running() {
		t.Fatal("kubetest: Restart: kube-apiserver is running; Stop it first")
	}
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(s.URL, "https://"))
	p, err := startProcess(s.ns, "kube-apiserver", filepath.Join(s.dir, "kube-apiserver-restarted.log"), s.binary,
		append([]string{"--secure-port=" + port}, s.args...)...)
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	s.t.Cleanup(func() { p.reportOnFailure(s.t); p.stop() })
	if err := waitFor(p, readyTimeout, func() bool { return ready(s.client) }); err != nil {
		t.Fatalf("kubetest: restarting kube-apiserver on %s: %v\n%s", s.URL, err, p.logTail(40))
	}
	s.apiserver = p
}

// Config returns a new client configuration of the admin identity (group
// system:masters: every request is allowed). The test may change it.
func (s *Server) Config() *rest.Config {
	return s.configWithToken(s.adminToken)
}

func (s *Server) configWithToken(token string) *rest.Config {
	return &rest.Config{
		Host:            s.URL,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAData: s.caPEM},
		UserAgent:       "kubetest",
		Dial:            s.dial,
		// Tests create objects in bursts; client-go's default of 5 per
		// second would make them wait for nothing.
		QPS:   200,
		Burst: 400,
	}
}

// Client returns a clientset of the admin identity.
func (s *Server) Client() kubernetes.Interface { return s.client }

// dial connects to addr from the servers' network namespace.
func (s *Server) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	d := &net.Dialer{Timeout: 10 * time.Second}
	if s.ns == nil {
		return d.DialContext(ctx, network, addr)
	}
	return s.ns.DialWith(d, network, addr)
}

// freeAddr returns a loopback address whose port was free a moment ago,
// below Linux's ephemeral range (32768-60999) so that no outgoing
// connection takes it before the server listens. A server that finds it
// taken all the same is started again on another.
func freeAddr(t testing.TB) string {
	t.Helper()
	for range 100 {
		addr := "127.0.0.1:" + strconv.Itoa(20000+rand.IntN(12000))
		if l, err := net.Listen("tcp", addr); err == nil {
			l.Close()
			return addr
		}
	}
	t.Fatal("kubetest: no free loopback port in 20000-31999 after 100 tries")
	return ""
}

func randomToken(t testing.TB) string {
	t.Helper()
	b := make([]byte, 24)
	if _, err := cryptorand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}
