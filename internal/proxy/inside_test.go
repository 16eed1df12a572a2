package proxy

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/audit"
	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/testutil/netns"
)

// TestOutsideRefusedAtAccept: connections from outside the inside are
// closed at accept, on the explicit and the transparent listener, with
// nothing said and nothing audited, only counted; though a rule without
// from allows the destination to every source. The inside is served, and
// so is any source connecting to a loopback address (only this host can).
//
// The addresses live on the loopback interface of a namespace, so a source
// and a listener can both be non-loopback addresses.
func TestOutsideRefusedAtAccept(t *testing.T) {
	const (
		listen  = "192.0.2.1"
		inside  = "192.0.2.2"
		outside = "192.0.2.3"
		host    = "192.0.2.4" // outside the inside too, but connecting to loopback
	)
	ns := netns.New(t)
	for _, a := range []string{listen, inside, outside, host} {
		ns.IP("addr", "add", a+"/32", "dev", "lo")
	}
	pol := mustParse(t, `
dns: {upstreams: [192.0.2.53]}
inside: {ranges: [`+inside+`/32]}
rules:
  - name: anyone
    to: [www.example]
`)
	buf := &syncBuffer{}
	p, err := New(Config{
		Policy:       func() *policy.Policy { return pol },
		Resolver:     mapResolver{},
		Audit:        audit.New(buf, "json", nil),
		DrainTimeout: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	listeners := []struct {
		name, addr string
		serve      func(context.Context, net.Listener) error
	}{
		{explicitListener, listen + ":3128", p.Serve},
		{transparentListener, listen + ":3129", p.ServeTransparent},
		{"explicit on loopback", "127.0.0.1:3128", p.Serve},
	}
	done := make(chan error, len(listeners))
	for _, l := range listeners {
		ln := ns.Listen("tcp", l.addr)
		go func() { done <- l.serve(ctx, ln) }()
	}
	t.Cleanup(func() {
		cancel()
		for range listeners {
			if err := <-done; err != nil {
				t.Errorf("serve: %v", err)
			}
		}
	})

	// talk connects from src to addr, sends a CONNECT and returns the
	// first line that came back, or what came before the proxy closed or
	// went quiet.
	talk := func(src, addr string) string {
		t.Helper()
		var c net.Conn
		err := ns.Do(func() (err error) {
			c, err = (&net.Dialer{Timeout: 3 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}).Dial("tcp", addr)
			return err
		})
		if err != nil {
			t.Fatalf("dialling %s from %s: %v", addr, src, err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		fmt.Fprintf(c, "CONNECT www.example:443 HTTP/1.1\r\nHost: www.example:443\r\n\r\n")
		line, _ := bufio.NewReader(c).ReadString('\n')
		return line
	}
	for _, l := range listeners[:2] {
		before := value(t, p.metrics.outside.WithLabelValues(l.name))
		if got := talk(outside, l.addr); got != "" {
			t.Errorf("%s listener: the outside was answered %q; want the connection closed, nothing said", l.name, got)
		}
		if got := value(t, p.metrics.outside.WithLabelValues(l.name)); got != before+1 {
			t.Errorf("%s listener: %v connections from outside counted, want %v", l.name, got, before+1)
		}
	}
	// The inside is served: the explicit proxy answers (it cannot resolve
	// www.example here), the transparent one audits its refusal (nothing
	// redirected the connection to it).
	if got := talk(inside, listen+":3128"); !strings.HasPrefix(got, "HTTP/1.1 ") {
		t.Errorf("explicit listener: the inside got %q, want an HTTP answer", got)
	}
	talk(inside, listen+":3129")
	if got := talk(host, "127.0.0.1:3128"); !strings.HasPrefix(got, "HTTP/1.1 ") {
		t.Errorf("explicit listener on loopback: %s (this host) got %q, want an HTTP answer", host, got)
	}
	for deadline := time.Now().Add(3 * time.Second); strings.Count(buf.String(), `"source":"`+inside+`"`) < 2 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	if n := strings.Count(buf.String(), `"source":"`+inside+`"`); n != 2 {
		t.Errorf("%d audit lines for the inside's two connections, want 2:\n%s", n, buf.String())
	}
	if strings.Contains(buf.String(), `"source":"`+outside+`"`) {
		t.Errorf("connections from outside were audited; want them counted only:\n%s", buf.String())
	}
}
