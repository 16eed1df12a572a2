package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/testutil/netns"
	"github.com/fqdngate/fqdngate/internal/testutil/syncbuf"
)

// gate is the fqdngate binary running as a process inside a namespace.
type gate struct {
	t      testing.TB
	ns     *netns.NS
	dir    string // holds the policy and the state file
	table  string
	policy string

	stderr, stdout syncBuffer

	mu     sync.Mutex // guards following
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has been waited for
	admin  string
	http   *http.Client
}

var tableSeq atomic.Int64

// newGate prepares a gate in ns with its own directory and table name;
// start runs it.
func newGate(t testing.TB, ns *netns.NS) *gate {
	t.Helper()
	g := &gate{
		t:     t,
		ns:    ns,
		dir:   t.TempDir(),
		table: fmt.Sprintf("e2e_%d_%d", os.Getpid(), tableSeq.Add(1)),
	}
	g.policy = filepath.Join(g.dir, "policy.yaml")
	g.http = &http.Client{
		Timeout: reachWait,
		Transport: &http.Transport{
			// The admin listener is on loopback inside the namespace.
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return ns.DialWith(&net.Dialer{Timeout: reachWait}, network, addr)
			},
			DisableKeepAlives: true,
		},
	}
	t.Cleanup(g.stop)
	return g
}

// stateFile is where the gate keeps learned addresses across restarts.
func (g *gate) stateFile() string { return filepath.Join(g.dir, "state.json") }

// writePolicy replaces the policy file the way editors do (write, then
// rename), which the daemon's file watcher sees as a change.
func (g *gate) writePolicy(body string) {
	g.t.Helper()
	tmp := g.policy + ".tmp"
	if err := os.WriteFile(tmp, []byte(body), 0o644); err != nil {
		g.t.Fatal(err)
	}
	if err := os.Rename(tmp, g.policy); err != nil {
		g.t.Fatal(err)
	}
}

var adminAddr = regexp.MustCompile(`component=admin addr=(\S+)`)

// start runs fqdngate on the policy file and returns once it has
// programmed its table and every listener serves.
func (g *gate) start() {
	g.t.Helper()
	mark := g.stderr.Len()
	cmd := exec.Command("ip", "netns", "exec", g.ns.Name, binary, "run", "-c", g.policy)
	cmd.Stdout = &g.stdout
	cmd.Stderr = &g.stderr
	if err := cmd.Start(); err != nil {
		g.t.Fatalf("starting fqdngate: %v", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	g.mu.Lock()
	g.cmd, g.exited = cmd, exited
	g.mu.Unlock()

	deadline := time.Now().Add(20 * time.Second)
	for {
		log := g.stderr.From(mark)
		if strings.Contains(log, `msg="policy loaded"`) {
			m := adminAddr.FindStringSubmatch(log)
			if m == nil {
				g.t.Fatalf("fqdngate logged no admin address; stderr:\n%s", log)
			}
			g.mu.Lock()
			g.admin = m[1]
			g.mu.Unlock()
			return
		}
		select {
		case <-exited:
			g.t.Fatalf("fqdngate exited during start: %v; stderr:\n%s", cmd.ProcessState, log)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			g.t.Fatalf("fqdngate did not finish starting in 20s; stderr:\n%s", log)
		}
	}
}

// kill9 kills fqdngate with SIGKILL, leaving its table in the kernel, and
// waits until the process is gone.
func (g *gate) kill9() {
	g.t.Helper()
	g.mu.Lock()
	cmd, exited := g.cmd, g.exited
	g.mu.Unlock()
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		g.t.Fatalf("killing fqdngate: %v", err)
	}
	<-exited
}

// stop ends fqdngate (SIGTERM, then SIGKILL) if it runs.
func (g *gate) stop() {
	g.mu.Lock()
	cmd, exited := g.cmd, g.exited
	g.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-exited:
		return
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(15 * time.Second):
		g.t.Errorf("fqdngate did not exit within 15s of SIGTERM; stderr:\n%s", g.stderr.String())
		_ = cmd.Process.Kill()
		<-exited
	}
}

// get fetches an admin endpoint.
func (g *gate) get(path string) (string, error) {
	g.mu.Lock()
	addr := g.admin
	g.mu.Unlock()
	resp, err := g.http.Get("http://" + addr + path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// metric returns the value of one series of /metrics, or -1 if it is
// absent.
func (g *gate) metric(series string) float64 {
	g.t.Helper()
	body, err := g.get("/metrics")
	if err != nil {
		g.t.Fatalf("reading /metrics: %v", err)
	}
	for _, line := range strings.Split(body, "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			var v float64
			if _, err := fmt.Sscan(rest, &v); err == nil {
				return v
			}
		}
	}
	return -1
}

// waitMetric polls /metrics until series reaches at least min.
func (g *gate) waitMetric(series string, min float64) {
	g.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if g.metric(series) >= min {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	g.t.Fatalf("metric %s never reached %v; stderr:\n%s", series, min, g.stderr.String())
}

// nft lists the gate's table, or reports that it does not exist.
func (g *gate) nft(args ...string) (string, error) {
	return g.ns.Exec("nft", args...)
}

// logs returns what fqdngate wrote to standard error and standard output,
// for failure messages.
func (g *gate) logs() string {
	return "stderr:\n" + g.stderr.String() + "\naudit log (last 4 KiB):\n" + tail(g.stdout.String(), 4096)
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

type syncBuffer = syncbuf.Buffer
