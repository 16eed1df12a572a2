package kubetest

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/fqdngate/fqdngate/internal/testutil/netns"
)

// process is a child process of the test (etcd or kube-apiserver) in its own
// process group, with its output in a log file.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{} // closed once the process has been waited for
}

// startProcess starts path with args, writing its output to logPath (and to
// stderr as well when FQDNGATE_KUBE_LOG=1), inside ns (nil: the test's own
// network namespace).
//
// The process gets its own process group, killed as a whole by stop, and
// SIGKILL as its parent-death signal, so that it does not outlive a test
// binary that is killed (a `go test -timeout` panic runs no cleanups). The
// parent-death signal is sent when the thread that started the child ends,
// not the process, so the child is started from a goroutine locked to its
// thread that lives until the child has exited: other packages' helpers end
// threads on purpose (a thread left in another network namespace). The same
// thread enters ns, and the child, forked from it, starts there.
func startProcess(ns *netns.NS, name, logPath, path string, args ...string) (*process, error) {
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("creating the log of %s: %w", name, err)
	}
	var out io.Writer = logFile
	if os.Getenv("FQDNGATE_KUBE_LOG") == "1" {
		out = io.MultiWriter(logFile, os.Stderr)
	}
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	p := &process{name: name, cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		// Never unlocked: the thread ends with this goroutine, after the
		// child has exited, so its network namespace does not matter after.
		runtime.LockOSThread()
		defer logFile.Close()
		if ns != nil {
			if err := unix.Setns(ns.Fd(), unix.CLONE_NEWNET); err != nil {
				started <- fmt.Errorf("entering network namespace %s: %w", ns.Name, err)
				return
			}
		}
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		_ = cmd.Wait()
		close(p.exited)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	return p, nil
}

// running reports whether the process has not exited yet.
func (p *process) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// stop kills the process group with SIGKILL and waits until the process has
// been reaped. The servers' data is thrown away with the test, so there is
// nothing to shut down gracefully. Stopping twice is a no-op.
func (p *process) stop() {
	if p.running() {
		// The negative pid is the process group: the server and anything
		// it may have started.
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	}
	<-p.exited
}

// logTail returns the last lines of the process's log, for failure messages.
func (p *process) logTail(lines int) string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return fmt.Sprintf("(reading the log of %s: %v)", p.name, err)
	}
	b = bytes.TrimRight(b, "\n")
	for i, n := len(b)-1, 0; i >= 0; i-- {
		if b[i] == '\n' {
			if n++; n == lines {
				b = b[i+1:]
				break
			}
		}
	}
	return string(b)
}

// reportOnFailure logs the tail of the process's log when the test has failed.
func (p *process) reportOnFailure(t testing.TB) {
	if t.Failed() {
		t.Logf("last lines of the %s log:\n%s", p.name, p.logTail(40))
	}
}
