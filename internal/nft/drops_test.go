package nft

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/testutil/netns"
)

// sendUDP sends one datagram from src to dst ("ip:port") in ns.
func sendUDP(t *testing.T, ns *netns.NS, src, dst string) {
	t.Helper()
	c, err := ns.Dial("udp", src, dst, time.Second)
	if err != nil {
		t.Fatalf("udp from %s to %s: %v", src, dst, err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("probe")); err != nil {
		t.Fatalf("udp from %s to %s: %v", src, dst, err)
	}
}

// waitDrops polls Drops until ok says they are what the test waits for;
// the kernel counts a packet as it passes, which the sender does not wait
// for.
func waitDrops(t *testing.T, b *Backend, what string, ok func(Drops) bool) Drops {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		d, err := b.Drops()
		if err != nil {
			t.Fatalf("Drops: %v", err)
		}
		if ok(d) {
			return d
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: Drops = %+v", what, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitKernel waits until the reverse path chain's counter, as nft lists
// it, reaches want.
func waitKernel(t *testing.T, ns *netns.NS, want uint64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		out := ns.MustExec("nft", "list", "chain", "inet", "fqdngate", reversePathChain)
		var pk, by uint64
		if i := strings.Index(out, "counter packets "); i >= 0 {
			fmt.Sscanf(out[i:], "counter packets %d bytes %d", &pk, &by)
		}
		if pk >= want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the reverse path counter never reached %d:\n%s", want, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestDrops: Drops reads the reverse path check's and the listeners
// chain's counters from the kernel, and keeps counting across a reload
// (which replaces the rules, and their counters) and across the table
// deleted behind the backend's back and put back.
func TestDrops(t *testing.T) {
	n := newForwardNet(t)
	n.gw.MustExec("sysctl", "-q", "-w", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0", "net.ipv4.conf.g1.rp_filter=0")
	// The internet side forges a payments source, which routes back
	// through g0, not g1 where it arrives.
	n.inet.IP("addr", "add", srcPayments+"/32", "dev", "i0")
	n.inet.IP("addr", "add", srcPay6+"/128", "dev", "i0", "nodad")
	p := mustParse(t, override(forwardPolicy, `listen: {dns: "[::]:53", admin: ""}`))
	b := startBackend(t, n.gw, Config{Hook: p.Firewall.Hook}, p)

	if d, err := b.Drops(); err != nil || d.ReversePath != 0 || d.Outside["dns"] != 0 || len(d.Outside) != 3 {
		t.Fatalf("before any packet: Drops = %+v, %v; want zeros for dns, proxy and transparent", d, err)
	}
	sendUDP(t, n.inet, srcPayments, srcOthers+":5432")
	sendUDP(t, n.inet, srcPay6, "[2001:db8:1::20]:5432")
	waitDrops(t, b, "two forged sources", func(d Drops) bool { return d.ReversePath >= 2 })
	// Outside the inside, to the DNS listener's port on the gateway.
	sendUDP(t, n.inet, srvA, "192.0.2.1:53")
	before := waitDrops(t, b, "a query from outside", func(d Drops) bool { return d.Outside["dns"] >= 1 })
	if before.Outside["proxy"] != 0 || before.Outside["transparent"] != 0 {
		t.Errorf("Drops = %+v: only the DNS listener was sent to", before)
	}

	// A reload replaces the rules; the counts go on from where they were,
	// with what the kernel counted since Drops last asked.
	sendUDP(t, n.inet, srcPayments, srcOthers+":5432")
	waitKernel(t, n.gw, before.ReversePath+1)
	before.ReversePath++
	reload := mustParse(t, override(forwardPolicy, `listen: {dns: "[::]:53", admin: ""}`, "mode: audit"))
	if err := b.Apply(context.Background(), reload); err != nil {
		t.Fatal(err)
	}
	after, err := b.Drops()
	if err != nil || after.ReversePath < before.ReversePath || after.Outside["dns"] < before.Outside["dns"] {
		t.Fatalf("after a reload: Drops = %+v, %v; want at least %+v", after, err, before)
	}
	sendUDP(t, n.inet, srcPayments, srcOthers+":5432")
	waitDrops(t, b, "a forged source after the reload (audit mode counts it)", func(d Drops) bool { return d.ReversePath >= before.ReversePath+1 })

	// Deleted behind the backend's back: the counts do not go down.
	before, _ = b.Drops()
	n.gw.MustExec("nft", "delete", "table", "inet", "fqdngate")
	if d, err := b.Drops(); err != nil || d.ReversePath < before.ReversePath || d.Outside["dns"] < before.Outside["dns"] {
		t.Errorf("with the table deleted: Drops = %+v, %v; want at least %+v", d, err, before)
	}
	if err := b.Apply(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	if d, err := b.Drops(); err != nil || d.ReversePath < before.ReversePath || d.Outside["dns"] < before.Outside["dns"] {
		t.Errorf("with the table put back: Drops = %+v, %v; want at least %+v", d, err, before)
	}
	sendUDP(t, n.inet, srcPay6, "[2001:db8:1::20]:5432")
	waitDrops(t, b, "a forged source once the table is back", func(d Drops) bool { return d.ReversePath >= before.ReversePath+1 })
}
