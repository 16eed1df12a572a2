package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// halfCloser is a connection whose write side can be shut alone; *net.TCPConn
// is one, and io.Copy between two of them uses splice(2).
type halfCloser interface {
	net.Conn
	CloseWrite() error
}

// copyBufSize is the user-space copy buffer. A read that fills it is taken
// as the start of a bulk transfer, which is then spliced.
const copyBufSize = 32 << 10

// copyChunk bounds one splice run, so deadlines are re-armed and byte
// counters updated at least this often on a busy tunnel.
const copyChunk = 1 << 20

var copyBufs = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// tunnel carries bytes between client and upstream until both directions
// have ended, the tunnel has been idle (no byte either way) for idle, or ctx
// is done. End of stream in one direction is passed on with CloseWrite, so
// protocols that half-close keep working. Both connections are closed on
// return. up and down count bytes as they pass.
//
// Small runs are copied through a pooled buffer that is taken only once
// data is readable, so an idle tunnel holds no buffer and no pipe; a read
// that fills the buffer switches that direction to splice(2) for up to
// copyChunk bytes.
func (p *Proxy) tunnel(ctx context.Context, client, upstream halfCloser, idle time.Duration, up, down *atomic.Int64) {
	p.metrics.active.Inc()
	defer p.metrics.active.Dec()
	closeBoth := sync.OnceFunc(func() {
		client.Close()
		upstream.Close()
	})
	stop := context.AfterFunc(ctx, closeBoth)
	defer stop()
	defer closeBoth()

	t := &tunnelState{idle: idle}
	t.last.Store(time.Now().UnixNano())
	t.timer = time.AfterFunc(idle, func() { t.check(closeBoth) })
	defer t.timer.Stop()

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if !p.pipe(upstream, client, t, up, true) {
			closeBoth()
		}
	}()
	if !p.pipe(client, upstream, t, down, false) {
		closeBoth()
	}
	wg.Wait()
}

// tunnelState is what both directions of a tunnel share for the idle
// timeout: one timer per tunnel instead of deadlines re-armed per read.
type tunnelState struct {
	idle  time.Duration
	last  atomic.Int64 // unix nanoseconds of the last byte either way
	bulk  atomic.Int32 // splice runs in progress; they watch idleness with deadlines
	ended atomic.Int32 // directions that reached end of stream
	timer *time.Timer
}

func (t *tunnelState) touch() { t.last.Store(time.Now().UnixNano()) }

// passEOF passes src's end of stream on to dst. The second direction to
// end skips the shutdown(2): the tunnel closes both connections next, and
// with both read to the end, close sends the same FIN.
func (t *tunnelState) passEOF(dst halfCloser) bool {
	if t.ended.Add(1) == 2 {
		return true
	}
	return dst.CloseWrite() == nil
}

// idleFor is how long nothing has moved either way.
func (t *tunnelState) idleFor() time.Duration {
	return time.Since(time.Unix(0, t.last.Load()))
}

// check runs when the timer fires: it closes the tunnel if nothing moved
// for idle, else re-arms for the rest of the period. A splice run in
// progress moves bytes without touching last, and has deadlines of its
// own, so it counts as activity.
func (t *tunnelState) check(closeBoth func()) {
	since := t.idleFor()
	switch {
	case t.bulk.Load() > 0:
		t.timer.Reset(t.idle)
	case since >= t.idle:
		closeBoth()
	default:
		t.timer.Reset(t.idle - since)
	}
}

// pipe copies src to dst. It reports true when src ended cleanly and the
// end was passed on; false on error or idleness, when the caller tears the
// whole tunnel down.
func (p *Proxy) pipe(dst, src halfCloser, t *tunnelState, count *atomic.Int64, isUp bool) bool {
	var rc syscall.RawConn
	if sc, ok := src.(syscall.Conn); ok {
		rc, _ = sc.SyscallConn()
	}
	for {
		buf, n, err := readSmall(src, rc)
		if n > 0 {
			t.touch()
			_, werr := dst.Write((*buf)[:n])
			full := n == len(*buf)
			copyBufs.Put(buf)
			if werr != nil {
				return false
			}
			t.touch()
			count.Add(int64(n))
			p.metrics.carried(isUp, int64(n))
			if full {
				if !p.bulkRun(dst, src, t, count, isUp) {
					return false
				}
				continue
			}
		} else if buf != nil {
			copyBufs.Put(buf)
		}
		switch {
		case err == nil:
			continue
		case errors.Is(err, io.EOF):
			return t.passEOF(dst)
		default:
			return false
		}
	}
}

// readSmall reads what src has into a pooled buffer, taken only once src
// is readable, so a goroutine waiting for data holds nothing. It returns
// the buffer (nil if none was taken) and io.EOF at end of stream.
func readSmall(src halfCloser, rc syscall.RawConn) (*[]byte, int, error) {
	if rc == nil {
		buf := copyBufs.Get().(*[]byte)
		n, err := src.Read(*buf)
		return buf, n, err
	}
	var (
		buf  *[]byte
		n    int
		rerr error
	)
	err := rc.Read(func(fd uintptr) bool {
		if buf == nil {
			buf = copyBufs.Get().(*[]byte)
		}
		for {
			n, rerr = syscall.Read(int(fd), *buf)
			if rerr != syscall.EINTR {
				break
			}
		}
		if rerr == syscall.EAGAIN {
			copyBufs.Put(buf) // wait empty-handed
			buf = nil
			return false
		}
		return true
	})
	if n < 0 {
		n = 0
	}
	switch {
	case err != nil:
		return buf, 0, err
	case rerr != nil:
		return buf, 0, os.NewSyscallError("read", rerr)
	case n == 0:
		return buf, 0, io.EOF
	}
	return buf, n, nil
}

// bulkPause is how long a splice run waits for more data before the
// direction goes back to user-space copying and gives its pipe back.
const bulkPause = time.Second

// bulkRun splices up to copyChunk bytes at a time while the source keeps
// them coming, and returns to user-space copying (true) once the source
// pauses for bulkPause. It reports false when the tunnel must be torn
// down.
func (p *Proxy) bulkRun(dst, src halfCloser, t *tunnelState, count *atomic.Int64, isUp bool) bool {
	t.bulk.Add(1)
	defer t.bulk.Add(-1)
	defer func() {
		src.SetReadDeadline(time.Time{})
		dst.SetWriteDeadline(time.Time{})
	}()
	for {
		idleAt := time.Unix(0, t.last.Load()).Add(t.idle)
		readBy := time.Now().Add(bulkPause)
		if idleAt.Before(readBy) {
			readBy = idleAt
		}
		src.SetReadDeadline(readBy)
		dst.SetWriteDeadline(idleAt)
		n, err := io.CopyN(dst, src, copyChunk)
		if n > 0 {
			t.touch()
			count.Add(n)
			p.metrics.carried(isUp, n)
		}
		switch {
		case err == nil:
			continue // a full run: more is likely coming
		case errors.Is(err, io.EOF):
			return t.passEOF(dst)
		case errors.Is(err, os.ErrDeadlineExceeded):
			// A pause, or the idle timeout (possibly while the other
			// direction was busy): go on unless nothing moved either way
			// for idle.
			return t.idleFor() < t.idle
		default:
			return false
		}
	}
}
