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

// endCause is how a tunnel ended, for its closing audit line.
type endCause int32

const (
	endEOF      endCause = iota // both sides finished sending
	endIdle                     // nothing moved either way for idle_timeout
	endShutdown                 // fqdngate shut down, and the drain deadline passed
	endClient                   // the client's side failed (a reset, ...)
	endUpstream                 // the upstream's side failed
	endError                    // a side failed during a splice, which one is not known
)

func (e endCause) String() string {
	return [...]string{"eof", "idle_timeout", "shutdown", "client_error", "upstream_error", "error"}[e]
}

// tunnel carries bytes between client and upstream until both directions
// have ended, the tunnel has been idle (no byte either way) for idle, or ctx
// is done, and says which. End of stream in one direction is passed on
// with CloseWrite, so protocols that half-close keep working. Both
// connections are closed on return. up and down count bytes as they pass.
//
// Small runs are copied through a pooled buffer that is taken only once
// data is readable, so an idle tunnel holds no buffer and no pipe; a read
// that fills the buffer switches that direction to splice(2) for up to
// copyChunk bytes.
func (p *Proxy) tunnel(ctx context.Context, client, upstream halfCloser, idle time.Duration, up, down *atomic.Int64) endCause {
	p.metrics.active.Inc()
	defer p.metrics.active.Dec()
	t := &tunnelState{ctx: ctx, idle: idle, client: client, upstream: upstream}
	stop := context.AfterFunc(ctx, t.shutdown)
	defer stop()
	defer t.closeBoth()

	t.last.Store(time.Now().UnixNano())
	t.timer = time.AfterFunc(idle, t.check)
	defer t.timer.Stop()

	t.wg.Add(1)
	go t.pipeUp(p, up)
	if !p.pipe(client, upstream, t, down, false) {
		t.closeBoth()
	}
	t.wg.Wait()
	return endCause(t.cause.Load())
}

// pipeUp carries the client's bytes upstream, in a goroutine of its own.
func (t *tunnelState) pipeUp(p *Proxy, up *atomic.Int64) {
	defer t.wg.Done()
	if !p.pipe(t.upstream, t.client, t, up, true) {
		t.closeBoth()
	}
}

// tunnelState is what both directions of a tunnel share for the idle
// timeout: one timer per tunnel instead of deadlines re-armed per read.
type tunnelState struct {
	ctx              context.Context // done: shutting down
	idle             time.Duration
	client, upstream halfCloser
	last             atomic.Int64 // unix nanoseconds of the last byte either way
	bulk             atomic.Int32 // splice runs in progress; they watch idleness with deadlines
	ended            atomic.Int32 // directions that reached end of stream
	cause            atomic.Int32 // the first endCause other than endEOF
	timer            *time.Timer
	closed           sync.Once
	wg               sync.WaitGroup // the upward pipe's goroutine
}

// closeBoth closes both connections, once.
func (t *tunnelState) closeBoth() {
	t.closed.Do(func() {
		t.client.Close()
		t.upstream.Close()
	})
}

// end records why the tunnel is ending, if nothing else ended it first:
// once one side fails, the other's errors are only the consequence. A
// side that fails during shutdown was closed by it.
func (t *tunnelState) end(why endCause) {
	if why != endIdle && t.ctx != nil && t.ctx.Err() != nil {
		why = endShutdown
	}
	t.cause.CompareAndSwap(int32(endEOF), int32(why))
}

// shutdown ends the tunnel for fqdngate's own shutdown.
func (t *tunnelState) shutdown() {
	t.end(endShutdown)
	t.closeBoth()
}

// failed records a failure of one side: the source's when reading failed
// (src), the destination's when writing did.
func (t *tunnelState) failed(isUp, src bool) {
	if isUp == src { // reading the client or writing to it
		t.end(endClient)
	} else {
		t.end(endUpstream)
	}
}

func (t *tunnelState) touch() { t.last.Store(time.Now().UnixNano()) }

// passEOF passes src's end of stream on to dst. The second direction to
// end skips the shutdown(2): the tunnel closes both connections next, and
// with both read to the end, close sends the same FIN.
func (t *tunnelState) passEOF(dst halfCloser) bool {
	if t.ended.Add(1) == 2 {
		return true
	}
	if dst.CloseWrite() != nil {
		t.end(endError)
		return false
	}
	return true
}

// idleFor is how long nothing has moved either way.
func (t *tunnelState) idleFor() time.Duration {
	return time.Since(time.Unix(0, t.last.Load()))
}

// check runs when the timer fires: it closes the tunnel if nothing moved
// for idle, else re-arms for the rest of the period. A splice run in
// progress moves bytes without touching last, and has deadlines of its
// own, so it counts as activity.
func (t *tunnelState) check() {
	since := t.idleFor()
	switch {
	case t.bulk.Load() > 0:
		t.timer.Reset(t.idle)
	case since >= t.idle:
		t.end(endIdle)
		t.closeBoth()
	default:
		t.timer.Reset(t.idle - since)
	}
}

// pipe copies src to dst. It reports true when src ended cleanly and the
// end was passed on; false on error or idleness, when the caller tears the
// whole tunnel down.
func (p *Proxy) pipe(dst, src halfCloser, t *tunnelState, count *atomic.Int64, isUp bool) bool {
	r := smallReader{src: src}
	if sc, ok := src.(syscall.Conn); ok {
		r.rc, _ = sc.SyscallConn()
	}
	r.readFn = r.read // bound once: each read would allocate it anew
	carried := p.metrics.bytesDown
	if isUp {
		carried = p.metrics.bytesUp
	}
	for {
		buf, n, err := r.readSmall()
		if n > 0 {
			t.touch()
			_, werr := dst.Write((*buf)[:n])
			full := n == len(*buf)
			copyBufs.Put(buf)
			if werr != nil {
				t.failed(isUp, false)
				return false
			}
			t.touch()
			count.Add(int64(n))
			carried.Add(float64(n))
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
			t.failed(isUp, true)
			return false
		}
	}
}

// smallReader reads what src has into a pooled buffer, taken only once src
// is readable, so a goroutine waiting for data holds nothing.
type smallReader struct {
	src    halfCloser
	rc     syscall.RawConn // nil: plain reads
	readFn func(fd uintptr) bool

	// Of the read in progress:
	buf  *[]byte
	n    int
	rerr error
}

// readSmall returns the buffer (nil if none was taken), the bytes read and
// io.EOF at end of stream.
func (r *smallReader) readSmall() (*[]byte, int, error) {
	if r.rc == nil {
		buf := copyBufs.Get().(*[]byte)
		n, err := r.src.Read(*buf)
		return buf, n, err
	}
	r.buf, r.n, r.rerr = nil, 0, nil
	err := r.rc.Read(r.readFn)
	buf, n := r.buf, max(r.n, 0)
	r.buf = nil
	switch {
	case err != nil:
		return buf, 0, err
	case r.rerr != nil:
		return buf, 0, os.NewSyscallError("read", r.rerr)
	case n == 0:
		return buf, 0, io.EOF
	}
	return buf, n, nil
}

// read is the RawConn.Read callback: it takes a buffer and reads, and gives
// the buffer back to wait empty-handed when there is nothing to read.
func (r *smallReader) read(fd uintptr) bool {
	if r.buf == nil {
		r.buf = copyBufs.Get().(*[]byte)
	}
	for {
		r.n, r.rerr = syscall.Read(int(fd), *r.buf)
		if r.rerr != syscall.EINTR {
			break
		}
	}
	if r.rerr == syscall.EAGAIN {
		copyBufs.Put(r.buf)
		r.buf = nil
		return false
	}
	return true
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
			if isUp {
				p.metrics.bytesUp.Add(float64(n))
			} else {
				p.metrics.bytesDown.Add(float64(n))
			}
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
			if t.idleFor() < t.idle {
				return true
			}
			t.end(endIdle)
			return false
		default:
			t.end(endError)
			return false
		}
	}
}
