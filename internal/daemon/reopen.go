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
// is in memory should the process die. SIGHUP reopens its file so that
// logrotate's "move, then SIGHUP" works.
type reopenWriter struct {
	stdout io.Writer

	mu   sync.Mutex // guards following
	dest *auditDest
	buf  *bufio.Writer
}

// auditDest is an opened audit log destination: the file at path, or
// standard output when path is "".
type auditDest struct {
	path string
	f    *os.File // nil for standard output
}

// openAuditDest opens path for appending, creating it and its directory;
// "" is standard output. It is the part of switching destinations that can
// fail, so a reload does it before it commits anything.
func openAuditDest(path string) (*auditDest, error) {
	if path == "" {
		return &auditDest{}, nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, err
	}
	return &auditDest{path: path, f: f}, nil
}

func (a *auditDest) close() error {
	if a.f == nil {
		return nil
	}
	return a.f.Close()
}

// newReopenWriter writes to stdout until swap gives it another destination.
func newReopenWriter(stdout io.Writer) *reopenWriter {
	return &reopenWriter{stdout: stdout, dest: &auditDest{}, buf: bufio.NewWriterSize(stdout, auditBufferSize)}
}

// path is the file written to; "" for standard output.
func (rw *reopenWriter) path() string {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	return rw.dest.path
}

// swap makes a the destination, flushing what the old one still owes and
// closing it. It cannot fail.
func (rw *reopenWriter) swap(a *auditDest) {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	_ = rw.buf.Flush()
	_ = rw.dest.close()
	rw.dest = a
	if a.f != nil {
		rw.buf.Reset(a.f)
	} else {
		rw.buf.Reset(rw.stdout)
	}
}

// reopen opens the current file again (logrotate moved it away). On error
// the open file stays.
func (rw *reopenWriter) reopen() error {
	a, err := openAuditDest(rw.path())
	if err != nil {
		return err
	}
	rw.swap(a)
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
	if cerr := rw.dest.close(); cerr != nil {
		return cerr
	}
	return err
}
