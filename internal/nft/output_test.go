package nft

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/sockmark"
	"github.com/fqdngate/fqdngate/internal/testutil/netns"
)

const outputPolicy = `
firewall: {backend: nftables, hook: output, table: fqdngate}
rules:
  - name: bank-api
    to: [api.bank.example]
    ports: [443]
`

// TestOutputHook runs fqdngate and its "clients" in one namespace, as on a
// host that limits its own egress.
func TestOutputHook(t *testing.T) {
	host, inet := netns.New(t), netns.New(t)
	netns.Veth(t, host, "h0", inet, "i0")
	host.Addr("h0", "192.0.2.1/24")
	for _, a := range []string{srvA + "/24", srvB + "/24", srvC + "/24"} {
		inet.Addr("i0", a)
	}
	for _, port := range serverPorts {
		serve(t, inet.Listen("tcp", "0.0.0.0:"+port))
	}
	serve(t, host.Listen("tcp", "127.0.0.1:9999"))
	udpEcho(t, inet.ListenPacket("udp", srvA+":53"), "upstream")
	udpEcho(t, host.ListenPacket("udp", "127.0.0.1:5353"), "fqdngate")
	tcpBanner(t, host.Listen("tcp", "[::]:15432"), "proxy")

	p := mustParse(t, override(outputPolicy,
		`listen: {dns: "127.0.0.1:5353", transparent: "[::]:15432"}`,
		"inside: {ranges: [192.0.2.0/24]}",
		"firewall: {backend: nftables, hook: output, table: fqdngate, transparent_ports: [5432]}"))
	b := startBackend(t, host, Config{Hook: policy.HookOutput}, p)
	publish(t, b, "bank-api", "", srvA, time.Minute)

	checkReach(t, host, []reach{
		{"", srvA, "443", true},
		{"", srvA, "8080", false},
		{"", srvB, "443", false},
		{"", "127.0.0.1", "9999", true}, // loopback untouched
	})

	// fqdngate's own sockets carry the mark and pass.
	d := &net.Dialer{Timeout: reachWait, Control: sockmark.Control}
	if c, err := host.DialWith(d, "tcp", srvB+":8080"); err != nil {
		t.Errorf("marked dial to unlearned %s: %v, want it to pass", srvB, err)
	} else {
		c.Close()
	}

	if got := udpAsk(t, host, "", srvA+":53"); got != "fqdngate" {
		t.Errorf("udp dns to %s:53 answered by %q, want fqdngate", srvA, got)
	}
	if got := tcpRead(host, "", srvC+":5432"); got != "proxy" {
		t.Errorf("tcp to %s:5432 answered by %q, want the transparent proxy", srvC, got)
	}
}

func TestShow(t *testing.T) {
	n := newForwardNet(t)
	b := startBackend(t, n.gw, Config{Hook: policy.HookForward, LogGroup: 3}, mustParse(t, forwardPolicy))
	publish(t, b, "bank-api", "payments", srvA, time.Minute)
	publish(t, b, "bank-api", "payments", srvB, time.Minute)
	var buf bytes.Buffer
	if err := b.Show(&buf); err != nil {
		t.Fatal(err)
	}
	got := buf.String()
	for _, want := range []string{
		"set learn4.bank-api.payments",
		"2 elements",
		"chain forward (type filter hook forward priority 0, policy accept)",
		"ip saddr @src4.payments ip daddr @learn4.bank-api.payments meta l4proto tcp th dport 443 accept  # rule bank-api from payments",
		`limit rate 10/second log prefix "fqdngate drop " group 3`,
		"counter packets 0 bytes 0 drop  # default deny",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("Show output lacks %q:\n%s", want, got)
		}
	}
	if err := b.Remove(); err != nil {
		t.Fatal(err)
	}
	buf.Reset()
	if err := b.Show(&buf); err != nil || !strings.Contains(buf.String(), "not installed") {
		t.Errorf("Show after Remove: %q, %v; want \"not installed\"", buf.String(), err)
	}
	if out, _ := n.gw.Exec("nft", "list", "table", "inet", "fqdngate"); !strings.Contains(out, "No such file") {
		t.Errorf("table still listed after Remove:\n%s", out)
	}
}

func TestFailedApplyKeepsOldTable(t *testing.T) {
	n := newForwardNet(t)
	b := startBackend(t, n.gw, Config{Hook: policy.HookForward}, mustParse(t, forwardPolicy))
	publish(t, b, "bank-api", "payments", srvA, time.Minute)
	before := n.gw.MustExec("nft", "list", "table", "inet", "fqdngate")

	b.breakApply = func(c *nftables.Conn) {
		c.DelSet(&nftables.Set{Table: b.table, Name: "no-such-set"})
	}
	open := mustParse(t, `
firewall: {backend: nftables, hook: forward, table: fqdngate}
inside: {ranges: [198.51.100.0/24]}
rules:
  - name: everything
    to: [0.0.0.0/0]
    ports: [1-65535]
`)
	if err := b.Apply(context.Background(), open); err == nil {
		t.Fatal("Apply with a failing message succeeded")
	}
	if after := n.gw.MustExec("nft", "list", "table", "inet", "fqdngate"); stripExpiry(after) != stripExpiry(before) {
		t.Errorf("table changed by a failed Apply:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	checkReach(t, n.client, []reach{
		{srcPayments, srvA, "443", true},
		{srcPayments, srvB, "443", false},
	})
	// The backend is still usable.
	b.breakApply = nil
	if err := b.Apply(context.Background(), open); err != nil {
		t.Fatalf("Apply after a failed one: %v", err)
	}
	checkReach(t, n.client, []reach{{srcPayments, srvB, "443", true}})
}

// stripExpiry drops the countdowns nft prints for timeout elements.
func stripExpiry(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if i := strings.Index(l, " expires "); i >= 0 {
			l = l[:i]
		}
		out = append(out, l)
	}
	return strings.Join(out, "\n")
}

// TestNoCapability runs New in a child process without CAP_NET_ADMIN.
func TestNoCapability(t *testing.T) {
	if os.Getenv("FQDNGATE_NOCAP_CHILD") == "1" {
		_, err := New(Config{Table: "fqdngate"})
		if err == nil {
			t.Fatal("New without CAP_NET_ADMIN succeeded")
		}
		os.Stdout.WriteString("ERR=" + err.Error() + "\n")
		return
	}
	netns.RequireRoot(t)
	capsh, err := exec.LookPath("capsh")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs capsh to drop CAP_NET_ADMIN, and CI=true forbids skipping")
		}
		t.Skip("needs capsh to drop CAP_NET_ADMIN")
	}
	cmd := exec.Command(capsh, "--drop=cap_net_admin", "--", "-c", `exec "$0" -test.run='^TestNoCapability$' -test.v`, os.Args[0])
	cmd.Env = append(os.Environ(), "FQDNGATE_NOCAP_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	if want := "ERR=" + ErrNoCapability.Error(); !strings.Contains(string(out), want) {
		t.Errorf("child output lacks %q:\n%s", want, out)
	}
}
