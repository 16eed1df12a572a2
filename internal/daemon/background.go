package daemon

import (
	"runtime"
	"syscall"
)

// backgroundNice is the nice value a reload's parse and compile run at.
// They are the only long computation a running gateway does, and on a
// machine of few cores the answers served meanwhile wait for a core
// behind them; the kernel gives a nice-10 thread about a tenth of the
// time of a nice-0 one it competes with, and preempts it sooner when an
// answer's thread wakes. On an idle core the reload runs as fast as ever.
const backgroundNice = 10

// inBackground runs f on a thread of its own at backgroundNice and waits
// for it. The thread is not handed back to the Go scheduler: the
// goroutine ends locked to it, so the runtime ends the thread with it
// and no later goroutine inherits the lower priority. If the priority
// cannot be set, f runs all the same.
func inBackground(f func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		// Linux: with PRIO_PROCESS, who is a thread ID.
		_ = syscall.Setpriority(syscall.PRIO_PROCESS, syscall.Gettid(), backgroundNice)
		f()
	}()
	<-done
}
