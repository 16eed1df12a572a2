package daemon

import (
	"bufio"
	"io"
	"os"
	"path/filepath"
	"sync"
)

// auditBufferSize bounds how much of the audit log waits in memory between
// flushes; flushInterval (see Run) bounds how long.
const auditBufferSize = 64 << 10

// reopenWriter is the audit log's destination. It buffers lines so that a
// busy DNS firewall does not pay a write system call per decision; Flush
// runs every flushInterval and at shutdown, so at most that much of the log
// is in memory should the process die. It reopens its file on every reload
// so that logrotate's "move, then SIGHUP" works.
type reopenWriter struct {
	mu     sync.Mutex // guards following
	path   string
	f      *os.File
	stdout io.Writer
	buf    *bufio.Writer
}

func newReopenWriter(path string, stdout io.Writer) (*reopenWriter, error) {
	rw := &reopenWriter{stdout: stdout}
	rw.buf = bufio.NewWriterSize(stdout, auditBufferSize)
	return rw, rw.reopen(path)
}

// reopen switches to path ("" for standard output), flushing what the old
// destination still owes. On error the old destination stays.
func (rw *reopenWriter) reopen(path string) error {
	var f *os.File
	if path != "" {
		if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
			return err
		}
		var err error
		f, err = os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
		if err != nil {
			return err
		}
	}
	rw.mu.Lock()
	defer rw.mu.Unlock()
	_ = rw.buf.Flush()
	if rw.f != nil {
		rw.f.Close()
	}
	rw.path, rw.f = path, f
	if f != nil {
		rw.buf.Reset(f)
	} else {
		rw.buf.Reset(rw.stdout)
	}
	return nil
}

// Write appends one line. The audit logger hands over whole lines, so a
// flush never splits one.
func (rw *reopenWriter) Write(b []byte) (int, error) {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	return rw.buf.Write(b)
}

// Flush writes out buffered lines.
func (rw *reopenWriter) Flush() error {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	return rw.buf.Flush()
}

func (rw *reopenWriter) Close() error {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	err := rw.buf.Flush()
	if rw.f != nil {
		return rw.f.Close()
	}
	return err
}
