package proxy

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/fqdngate/fqdngate/internal/policy"
)

// connCounter is a backend that counts the connections it accepted and
// has seen closed.
type connCounter struct {
	mu             sync.Mutex
	opened, closed int
}

func (c *connCounter) state(_ net.Conn, s http.ConnState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch s {
	case http.StateNew:
		c.opened++
	case http.StateClosed:
		c.closed++
	}
}

func (c *connCounter) counts() (opened, closed int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.opened, c.closed
}

func TestForwardReusesUpstreamWithinPolicy(t *testing.T) {
	cc := &connCounter{}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(backend))
	srv.Config.ConnState = cc.state
	srv.Start()
	defer srv.Close()
	u, _ := url.Parse(srv.URL)

	var cur atomic.Pointer[policy.Policy]
	pol1 := mustParse(t, webPolicy(u.Port()))
	cur.Store(pol1)
	h := startProxy(t, webPolicy(u.Port()), mapResolver{"web.test": addrs("127.0.0.1")}, func(c *Config) {
		c.Policy = cur.Load
	})
	client := proxyClient(h.addr, nil)
	get := func(path string) {
		t.Helper()
		resp, err := client.Get(fmt.Sprintf("http://web.test:%s%s", u.Port(), path))
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("GET %s: got %d, want 200", path, resp.StatusCode)
		}
	}
	for i := range 3 {
		get(fmt.Sprintf("/same-policy-%d", i))
	}
	if opened, _ := cc.counts(); opened != 1 {
		t.Errorf("3 sequential requests under one policy: backend saw %d connections, want 1 (reused)", opened)
	}
	// Every request is still decided and audited, and names the address.
	dialled := fmt.Sprintf(`"dialled":"127.0.0.1:%s"`, u.Port())
	waitFor(t, "3 audit lines naming the dialled address", func() bool { return len(h.auditLines(dialled)) == 3 })

	// A reload: the next request must not reuse the old policy's
	// connection, and that connection is closed.
	cur.Store(mustParse(t, webPolicy(u.Port())))
	get("/new-policy")
	waitFor(t, "the old policy's idle upstream connection to close", func() bool {
		_, closed := cc.counts()
		return closed >= 1
	})
	if opened, _ := cc.counts(); opened != 2 {
		t.Errorf("after a reload: backend saw %d connections, want 2 (a fresh one for the new policy)", opened)
	}

	// A policy that no longer allows the name refuses, pooled connection
	// or not.
	cur.Store(mustParse(t, "proxy: {deny_private: true}\nrules:\n  - name: other\n    to: [other.test]\n    ports: [80]\n"))
	resp, err := client.Get(fmt.Sprintf("http://web.test:%s/denied", u.Port()))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("after a reload that denies: got %d, want 403", resp.StatusCode)
	}
}
