package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/testutil/etcdtest"
)

// TestSystemdNotify runs the real binary as systemd's Type=notify does:
// with $NOTIFY_SOCKET naming a unix datagram socket the test bound. It
// must say READY=1 once /readyz says ready, RELOADING=1 then READY=1
// around a SIGHUP, and STOPPING=1 on SIGTERM.
func TestSystemdNotify(t *testing.T) {
	// A short directory: a socket path must fit in 108 bytes.
	sockDir, err := os.MkdirTemp("", "sdn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	sock := filepath.Join(sockDir, "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// next returns the next datagram that carries want, failing on a
	// READY=1, RELOADING=1 or STOPPING=1 that comes first.
	next := func(want string) string {
		t.Helper()
		buf := make([]byte, 4096)
		for {
			_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
			n, err := c.Read(buf)
			if err != nil {
				t.Fatalf("waiting for %s: %v", want, err)
			}
			msg := string(buf[:n])
			lines := strings.Split(strings.TrimSuffix(msg, "\n"), "\n")
			for _, l := range lines {
				if l == want {
					return msg
				}
			}
			for _, l := range lines {
				if l == "READY=1" || l == "RELOADING=1" || l == "STOPPING=1" {
					t.Fatalf("got %q while waiting for %s", msg, want)
				}
			}
		}
	}

	dir := t.TempDir()
	p := writePolicy(t, dir, policyV1)
	d := startBinaryEnv(t, binary, p, "NOTIFY_SOCKET="+sock)
	msg := next("READY=1")
	if !strings.Contains(msg, "STATUS=serving "+p) {
		t.Errorf("READY=1 without the status line: %q", msg)
	}
	if body := d.get(t, "/readyz"); !strings.HasPrefix(body, "ready") {
		t.Errorf("READY=1 sent while /readyz says %q", body)
	}

	writePolicy(t, dir, policyV2)
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	msg = next("RELOADING=1")
	if !strings.Contains(msg, "MONOTONIC_USEC=") {
		t.Errorf("RELOADING=1 without MONOTONIC_USEC: %q", msg)
	}
	next("READY=1")
	// The reload was done when READY=1 came: the new policy decides.
	if got := d.explainAction(t, "127.0.0.1", "b.example"); got != "allow" {
		t.Errorf("after READY=1 of the reload: b.example got %s, want allow", got)
	}

	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	next("STOPPING=1")
	if err := d.cmd.Wait(); err != nil {
		t.Errorf("after SIGTERM: %v; stderr:\n%s", err, d.logs())
	}
}

// TestNotifySocketMissing: with a notify socket that does not exist
// fqdngate still serves, and says why systemd may not see it start.
func TestNotifySocketMissing(t *testing.T) {
	dir := t.TempDir()
	p := writePolicy(t, dir, policyV1)
	d := startBinaryEnv(t, binary, p, "NOTIFY_SOCKET="+filepath.Join(dir, "absent"))
	if got := d.explainAction(t, "127.0.0.1", "a.example"); got != "allow" {
		t.Errorf("a.example: got %s, want allow", got)
	}
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(d.logs(), "systemd notification failed") {
		if time.Now().After(deadline) {
			t.Fatalf("no warning about the missing notify socket; stderr:\n%s", d.logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestSystemdNotifyWaitsForReady: a fleet gateway that starts before any
// shared revision exists is not ready (/readyz says so), so it must not
// say READY=1, only STATUS with why; the first revision makes it ready,
// and READY=1 follows.
func TestSystemdNotifyWaitsForReady(t *testing.T) {
	c := etcdtest.Start(t, 1)
	local, dir := fleetFiles(t, c)
	sockDir, err := os.MkdirTemp("", "sdn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	sock := filepath.Join(sockDir, "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	recv := func(timeout time.Duration) (string, bool) {
		buf := make([]byte, 4096)
		_ = conn.SetReadDeadline(time.Now().Add(timeout))
		n, err := conn.Read(buf)
		if err != nil {
			return "", false
		}
		return string(buf[:n]), true
	}

	d := startBinaryEnv(t, binary, local, "NOTIFY_SOCKET="+sock)
	msg, ok := recv(20 * time.Second)
	if !ok || strings.Contains(msg, "READY=1") || !strings.Contains(msg, "STATUS=starting; not ready: no shared policy revision applied yet") {
		t.Fatalf("first notification %q (received %v), want a STATUS saying why it is not ready; stderr:\n%s", msg, ok, d.logs())
	}
	if body := d.get(t, "/readyz"); strings.HasPrefix(body, "ready") {
		t.Fatalf("/readyz says %q before any revision", body)
	}
	// Nothing more while it waits: no READY=1 (a STATUS only if the reason changes).
	for {
		msg, ok := recv(time.Second)
		if !ok {
			break
		}
		if strings.Contains(msg, "READY=1") {
			t.Fatalf("READY=1 before any shared revision: %q", msg)
		}
	}

	shared := writeFile(t, dir, "shared.yaml", "dns: {upstreams: [192.0.2.53]}\nrules:\n  - name: web\n    to: [example.com]\n")
	if out, errOut, code := runCLI(t, "policy", "push", "-c", local, shared); code != 0 {
		t.Fatalf("push: exit %d %q\n%s", code, out, errOut)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		msg, ok := recv(time.Until(deadline))
		if !ok {
			t.Fatalf("no READY=1 after the first revision; /readyz %q; stderr:\n%s", d.get(t, "/readyz"), d.logs())
		}
		if strings.Contains(msg, "READY=1") {
			break
		}
	}
	if body := d.get(t, "/readyz"); !strings.HasPrefix(body, "ready") {
		t.Errorf("READY=1 sent while /readyz says %q", body)
	}
}
