package daemon

import (
	"os"
	"runtime"
	"sync"
	"syscall"
)

// backgroundNice is the nice value a reload's parse and compile run at.
// They are the only long computation a running gateway does, and on a
// machine of few cores the answers served meanwhile wait for a core
// behind them; the kernel gives a nice-10 thread about a tenth of the
// time of a nice-0 one it competes with, and preempts it sooner when an
// answer's thread wakes. On an idle core the reload runs as fast as ever.
const backgroundNice = 10

// backgroundMu serializes inBackground, which changes GOMAXPROCS.
var backgroundMu sync.Mutex

// inBackground runs f on a thread of its own at backgroundNice and waits
// for it. The thread is not handed back to the Go scheduler: the
// goroutine ends locked to it, so the runtime ends the thread with it
// and no later goroutine inherits the lower priority. If the priority
// cannot be set, f runs all the same.
//
// f also gets a processor (P) of its own: GOMAXPROCS is one higher while
// it runs. Otherwise it would hold one of the processors the answers run
// on for as long as it runs, whether or not the kernel gives its thread
// the CPU; and yielding it back every few hundred microseconds, as a
// reload did until 2026-12-07, hands a locked thread's processor from
// thread to thread each time, which slowed the answers served during a
// reload of 100,000 rules by 12-16% at the median, against 1-4% with a
// processor of its own and no yields (BENCHMARKS.md, issue 16).
func inBackground(f func()) {
	backgroundMu.Lock()
	defer backgroundMu.Unlock()
	procs := runtime.GOMAXPROCS(0)
	runtime.GOMAXPROCS(procs + 1)
	defer restoreProcs(procs)

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

// restoreProcs puts GOMAXPROCS back to procs. Setting it turned off the
// runtime's own updates (it follows the CPU limit of the cgroup), so when
// the environment does not fix GOMAXPROCS those are turned back on.
func restoreProcs(procs int) {
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.SetDefaultGOMAXPROCS()
		if runtime.GOMAXPROCS(0) == procs {
			return
		}
	}
	runtime.GOMAXPROCS(procs)
}
