package peek

import (
	"errors"
	"io"
	"net"
	"sync"
)

// Conn is a net.Conn whose reads first return bytes already peeked from it,
// so the splice to upstream sees the connection from its first byte.
type Conn struct {
	net.Conn

	mu  sync.Mutex // guards buf
	buf []byte     // peeked bytes not yet read
}

// NewConn returns c with buffered put back in front of its unread data.
// buffered is retained, not copied.
func NewConn(c net.Conn, buffered []byte) *Conn {
	return &Conn{Conn: c, buf: buffered}
}

// Read returns peeked bytes while there are any, then reads from the
// underlying connection.
func (c *Conn) Read(p []byte) (int, error) {
	if n := c.take(p); n > 0 {
		return n, nil
	}
	return c.Conn.Read(p)
}

func (c *Conn) take(p []byte) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := copy(p, c.buf)
	c.buf = c.buf[n:]
	return n
}

// WriteTo writes the peeked bytes to w, then hands the underlying connection
// to w's ReadFrom when it has one. io.Copy prefers WriteTo, and without it
// the wrapper would hide the *net.TCPConn that lets the kernel splice(2)
// TCP to TCP without copying through user space.
func (c *Conn) WriteTo(w io.Writer) (int64, error) {
	c.mu.Lock()
	buf := c.buf
	c.buf = nil
	c.mu.Unlock()
	n, err := w.Write(buf)
	if err != nil {
		return int64(n), err
	}
	var m int64
	if rf, ok := w.(io.ReaderFrom); ok {
		m, err = rf.ReadFrom(c.Conn)
	} else {
		m, err = io.Copy(w, c.Conn)
	}
	return int64(n) + m, err
}

// CloseWrite half-closes the underlying connection, so a splice can pass an
// EOF on without a full close. It fails with errors.ErrUnsupported when the
// connection cannot half-close (*net.TCPConn can).
func (c *Conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}
