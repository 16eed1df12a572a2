package proxy

import (
	"context"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestListenKeepAlive checks that connections accepted by Listen have
// keep-alive on with the client settings, which they inherit from the
// listening socket rather than being given one by one.
func TestListenKeepAlive(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
		t.Run(addr, func(t *testing.T) {
			ln, err := Listen(context.Background(), addr)
			if err != nil {
				t.Skipf("no %s: %v", addr, err)
			}
			defer ln.Close()
			d := net.Dialer{KeepAlive: -1}
			cc, err := d.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			sc, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer sc.Close()
			want := map[string]struct{ level, opt, v int }{
				"SO_KEEPALIVE":  {unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
				"TCP_KEEPIDLE":  {unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, int(clientKeepAliveIdle / time.Second)},
				"TCP_KEEPINTVL": {unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, int(clientKeepAliveInterval / time.Second)},
				"TCP_KEEPCNT":   {unix.IPPROTO_TCP, unix.TCP_KEEPCNT, clientKeepAliveCount},
				"TCP_NODELAY":   {unix.IPPROTO_TCP, unix.TCP_NODELAY, 1},
			}
			for _, c := range []struct {
				side string
				conn net.Conn
			}{{"accepted", sc}, {"dialled (control: keep-alive off)", cc}} {
				rc, err := c.conn.(*net.TCPConn).SyscallConn()
				if err != nil {
					t.Fatal(err)
				}
				for name, o := range want {
					var got int
					var gerr error
					rc.Control(func(fd uintptr) { got, gerr = unix.GetsockoptInt(int(fd), o.level, o.opt) })
					if gerr != nil {
						t.Fatalf("%s: getsockopt %s: %v", c.side, name, gerr)
					}
					if c.side == "accepted" && got != o.v {
						t.Errorf("accepted connection: %s = %d, want %d", name, got, o.v)
					}
					if c.side != "accepted" && name == "SO_KEEPALIVE" && got != 0 {
						t.Errorf("dialled connection has keep-alive on: the test cannot tell inherited settings from defaults")
					}
				}
			}
		})
	}
}

// TestDialerKeepAlive checks that upstream connections get keep-alive from
// dialControl, set before connecting since net.Dialer's is off.
func TestDialerKeepAlive(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := newDialer().Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range []struct {
		name       string
		level, opt int
		want       int
	}{
		{"SO_KEEPALIVE", unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
		{"TCP_KEEPIDLE", unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, int(upstreamKeepAliveIdle / time.Second)},
		{"TCP_KEEPINTVL", unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, int(clientKeepAliveInterval / time.Second)},
		{"TCP_KEEPCNT", unix.IPPROTO_TCP, unix.TCP_KEEPCNT, clientKeepAliveCount},
	} {
		var got int
		var gerr error
		rc.Control(func(fd uintptr) { got, gerr = unix.GetsockoptInt(int(fd), o.level, o.opt) })
		if gerr != nil || got != o.want {
			t.Errorf("%s = %d (%v), want %d", o.name, got, gerr, o.want)
		}
	}
}
