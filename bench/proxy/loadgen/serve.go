package main

import (
	"errors"
	"flag"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

// msgSize is the request and the reply of a short tunnel.
const msgSize = 64

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	sink := fs.String("sink", "", "address of the sink: reads and discards until EOF")
	echo := fs.String("echo", "", "address of the echo server: echoes each 64 bytes read, until EOF")
	httpAddr := fs.String("http", "", "address of the HTTP server: 64-byte body, keep-alive")
	if err := fs.Parse(args); err != nil {
		return err
	}
	errc := make(chan error, 3)
	for _, s := range []struct {
		addr   string
		handle func(net.Conn)
	}{{*sink, handleSink}, {*echo, handleEcho}} {
		if s.addr == "" {
			continue
		}
		ln, err := listen(s.addr)
		if err != nil {
			return err
		}
		go func() { errc <- acceptLoop(ln, s.handle) }()
	}
	if *httpAddr != "" {
		ln, err := listen(*httpAddr)
		if err != nil {
			return err
		}
		body := make([]byte, msgSize)
		for i := range body {
			body[i] = 'a' + byte(i%26)
		}
		body[msgSize-1] = '\n'
		srv := &http.Server{
			Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/plain")
				w.Header().Set("Content-Length", strconv.Itoa(len(body)))
				w.Write(body)
			}),
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       5 * time.Minute,
		}
		go func() { errc <- srv.Serve(ln) }()
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-sig:
		return nil
	case err := <-errc:
		return err
	}
}

func listen(addr string) (net.Listener, error) {
	if err := checkLoopback(addr); err != nil {
		return nil, err
	}
	return net.Listen("tcp", addr)
}

func acceptLoop(ln net.Listener, handle func(net.Conn)) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			// EMFILE and friends: back off instead of spinning.
			time.Sleep(10 * time.Millisecond)
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			continue
		}
		go handle(c)
	}
}

func handleSink(c net.Conn) {
	defer c.Close()
	buf := make([]byte, 256<<10)
	for {
		if _, err := c.Read(buf); err != nil {
			return
		}
	}
}

// handleEcho answers each 64 bytes read with the same 64 bytes: once for
// a short tunnel, twice for an idle one (when it opens and at the end).
// The client closes first, as an HTTP/1.0 client would after reading its
// reply; the echo waits for that, so TIME_WAIT lands on the client side.
func handleEcho(c net.Conn) {
	defer c.Close()
	var buf [msgSize]byte
	for {
		if _, err := io.ReadFull(c, buf[:]); err != nil {
			return
		}
		if _, err := c.Write(buf[:]); err != nil {
			return
		}
	}
}
