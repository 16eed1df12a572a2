package daemon

import (
	"io"
	"os"
	"path/filepath"
	"sync"
)

// reopenWriter is the audit log's destination. It reopens its file on every
// reload so that logrotate's "move, then SIGHUP" works.
type reopenWriter struct {
	mu   sync.Mutex // guards following
	path string
	f    *os.File
	w    io.Writer
}

func newReopenWriter(path string, stdout io.Writer) (*reopenWriter, error) {
	rw := &reopenWriter{w: stdout}
	return rw, rw.reopen(path)
}

// reopen switches to path ("" for standard output). On error the old
// destination stays.
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
	if rw.f != nil {
		rw.f.Close()
	}
	rw.path, rw.f = path, f
	return nil
}

func (rw *reopenWriter) Write(b []byte) (int, error) {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	if rw.f != nil {
		return rw.f.Write(b)
	}
	return rw.w.Write(b)
}

func (rw *reopenWriter) Close() error {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	if rw.f != nil {
		return rw.f.Close()
	}
	return nil
}
