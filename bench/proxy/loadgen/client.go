package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"
)

// dest says where a client connects: through a CONNECT proxy to target, or
// straight to target when proxy is empty.
type dest struct {
	proxy  string
	target string
	// request is what a tunnel carries first: a request head for target
	// of msgSize bytes. A proxy that inspects tunnels (fqdngate) lets it
	// through, and every proxy carries the same bytes.
	request []byte
}

// requestHead returns an HTTP/1.1 request head for target, padded to size
// bytes in a field of its own.
func requestHead(target string, size int) ([]byte, error) {
	head := "GET / HTTP/1.1\r\nHost: " + target + "\r\nX: "
	pad := size - len(head) - len("\r\n\r\n")
	if pad < 0 {
		return nil, fmt.Errorf("a request head for %s does not fit in %d bytes", target, size)
	}
	return []byte(head + strings.Repeat("x", pad) + "\r\n\r\n"), nil
}

// destFlags registers -proxy, -target and -direct on fs.
func destFlags(fs *flag.FlagSet) func() (dest, error) {
	proxy := fs.String("proxy", "127.0.0.1:3128", "proxy address (loopback)")
	target := fs.String("target", "", "backend address the tunnels lead to (loopback)")
	direct := fs.Bool("direct", false, "connect to -target without the proxy")
	return func() (dest, error) {
		d := dest{proxy: *proxy, target: *target}
		if *direct {
			d.proxy = ""
		}
		if d.target == "" {
			return d, errors.New("-target is required")
		}
		for _, a := range []string{d.proxy, d.target} {
			if a == "" {
				continue
			}
			if err := checkLoopback(a); err != nil {
				return d, err
			}
		}
		var err error
		d.request, err = requestHead(d.target, msgSize)
		return d, err
	}
}

// checkLoopback refuses any address outside 127.0.0.0/8 and ::1: this
// tool only ever sends traffic on this host.
func checkLoopback(addr string) error {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return fmt.Errorf("%q: want a loopback IP:port: %v", addr, err)
	}
	if !ap.Addr().Unmap().IsLoopback() {
		return fmt.Errorf("%q is not a loopback address; this benchmark only talks to 127.0.0.0/8 or ::1", addr)
	}
	return nil
}

var errStatus = errors.New("proxy refused the tunnel")

// open returns a connection to d.target, through the proxy if there is
// one. Bytes the proxy sent after its response head (none, unless the
// backend spoke first) are returned as extra.
func (d dest) open(timeout time.Duration) (c net.Conn, extra []byte, err error) {
	if d.proxy == "" {
		c, err = net.DialTimeout("tcp", d.target, timeout)
		return c, nil, err
	}
	c, err = net.DialTimeout("tcp", d.proxy, timeout)
	if err != nil {
		return nil, nil, err
	}
	c.SetDeadline(time.Now().Add(timeout))
	req := "CONNECT " + d.target + " HTTP/1.1\r\nHost: " + d.target + "\r\n\r\n"
	if _, err := c.Write([]byte(req)); err != nil {
		c.Close()
		return nil, nil, err
	}
	extra, err = readHead(c)
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	c.SetDeadline(time.Time{})
	return c, extra, nil
}

// readHead reads a CONNECT response head and checks for a 2xx status.
func readHead(c net.Conn) ([]byte, error) {
	var buf [1024]byte
	n := 0
	for {
		m, err := c.Read(buf[n:])
		n += m
		if i := bytes.Index(buf[:n], []byte("\r\n\r\n")); i >= 0 {
			line := buf[:n]
			if j := bytes.IndexByte(line, '\r'); j >= 0 {
				line = line[:j]
			}
			// "HTTP/1.x 200 ..."
			if len(line) < 12 || line[9] != '2' {
				return nil, fmt.Errorf("%w: %q", errStatus, line)
			}
			return bytes.Clone(buf[i+4 : n]), nil
		}
		if err != nil {
			return nil, fmt.Errorf("reading the CONNECT response: %w", err)
		}
		if n == len(buf) {
			return nil, errors.New("CONNECT response head over 1 KiB")
		}
	}
}
