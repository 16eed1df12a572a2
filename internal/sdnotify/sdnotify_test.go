package sdnotify

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// listen binds a unixgram socket as systemd does for $NOTIFY_SOCKET.
func listen(t *testing.T, name string) *net.UnixConn {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func recv(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 4096)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	return string(buf[:n])
}

func TestSend(t *testing.T) {
	dir, err := os.MkdirTemp("", "sdn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "notify")
	abstract := "@fqdngate-sdnotify-test-" + filepath.Base(dir)
	for _, name := range []string{path, abstract} {
		c := listen(t, name)
		n := New(name)
		tests := []struct {
			state []string
			want  string
		}{
			{Ready("serving\non two lines"), "READY=1\nSTATUS=serving on two lines\n"},
			{Stopping(), "STOPPING=1\nSTATUS=stopping\n"},
			{Status("waiting"), "STATUS=waiting\n"},
		}
		for _, tt := range tests {
			if err := n.Send(tt.state...); err != nil {
				t.Fatal(err)
			}
			if got := recv(t, c); got != tt.want {
				t.Errorf("%s: got %q, want %q", name, got, tt.want)
			}
		}
		if err := n.Send(Reloading()...); err != nil {
			t.Fatal(err)
		}
		got := recv(t, c)
		if !strings.HasPrefix(got, "RELOADING=1\nMONOTONIC_USEC=") || strings.HasSuffix(got, "MONOTONIC_USEC=0\n") {
			t.Errorf("%s: reloading: got %q", name, got)
		}
	}
}

func TestNilAndErrors(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	n := FromEnv()
	if n != nil {
		t.Fatalf("FromEnv without NOTIFY_SOCKET = %v, want nil", n)
	}
	if err := n.Send("READY=1"); err != nil {
		t.Errorf("nil notifier: %v", err)
	}
	err := New(filepath.Join(t.TempDir(), "absent")).Send("READY=1")
	if err == nil || !strings.Contains(err.Error(), "notifying the service manager") {
		t.Errorf("absent socket: got %v, want an error naming it", err)
	}
}
