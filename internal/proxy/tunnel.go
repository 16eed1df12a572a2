package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// halfCloser is a connection whose write side can be shut alone; *net.TCPConn
// is one, and io.Copy between two of them uses splice(2).
type halfCloser interface {
	net.Conn
	CloseWrite() error
}

// copyChunk bounds one splice run, so deadlines are re-armed and byte
// counters updated at least this often on a busy tunnel.
const copyChunk = 1 << 20

// tunnel carries bytes between client and upstream until both directions
// have ended, the tunnel has been idle (no byte either way) for idle, or ctx
// is done. End of stream in one direction is passed on with CloseWrite, so
// protocols that half-close keep working. Both connections are closed on
// return. up and down count bytes as they pass.
func (p *Proxy) tunnel(ctx context.Context, client, upstream halfCloser, idle time.Duration, up, down *atomic.Int64) {
	p.metrics.active.Inc()
	defer p.metrics.active.Dec()
	var last atomic.Int64 // unix nanoseconds of the last byte either way
	last.Store(time.Now().UnixNano())
	closeBoth := sync.OnceFunc(func() {
		client.Close()
		upstream.Close()
	})
	stop := context.AfterFunc(ctx, closeBoth)
	defer stop()
	defer closeBoth()

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if !p.pipe(upstream, client, idle, &last, up, true) {
			closeBoth()
		}
	}()
	if !p.pipe(client, upstream, idle, &last, down, false) {
		closeBoth()
	}
	wg.Wait()
}

// pipe copies src to dst. It reports true when src ended cleanly and the
// end was passed on; false on error or idleness, when the caller tears the
// whole tunnel down.
func (p *Proxy) pipe(dst, src halfCloser, idle time.Duration, last, count *atomic.Int64, isUp bool) bool {
	for {
		deadline := time.Unix(0, last.Load()).Add(idle)
		src.SetReadDeadline(deadline)
		dst.SetWriteDeadline(deadline)
		n, err := io.CopyN(dst, src, copyChunk)
		if n > 0 {
			last.Store(time.Now().UnixNano())
			count.Add(n)
			p.metrics.carried(isUp, n)
		}
		switch {
		case err == nil:
			continue
		case errors.Is(err, io.EOF):
			return dst.CloseWrite() == nil
		case errors.Is(err, os.ErrDeadlineExceeded):
			// Our deadline, possibly while the other direction was busy:
			// go on unless nothing moved either way for idle.
			if time.Since(time.Unix(0, last.Load())) < idle {
				continue
			}
			return false
		default:
			return false
		}
	}
}
