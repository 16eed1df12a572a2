package daemon

import (
	"os"
	"runtime"
	"syscall"
	"testing"
)

// niceOfThisThread is the calling thread's nice value. (The getpriority
// system call returns 20 - nice, so that it is never negative.)
func niceOfThisThread(t *testing.T) int {
	t.Helper()
	prio, err := syscall.Getpriority(syscall.PRIO_PROCESS, syscall.Gettid())
	if err != nil {
		t.Fatal(err)
	}
	return 20 - prio
}

func TestInBackgroundLowersOnlyItsThread(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	before := niceOfThisThread(t)
	var inside int
	inBackground(func() { inside = niceOfThisThread(t) })
	want := backgroundNice
	if before > backgroundNice && os.Geteuid() != 0 {
		want = before // only root may raise a thread's priority back
	}
	if inside != want {
		t.Errorf("nice inside inBackground = %d, want %d", inside, want)
	}
	if after := niceOfThisThread(t); after != before {
		t.Errorf("the caller's thread went from nice %d to %d", before, after)
	}
	// Goroutines started later run on threads of the usual priority: the
	// one inBackground lowered ended with its goroutine.
	for range 20 {
		done := make(chan int)
		go func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			done <- niceOfThisThread(t)
		}()
		if n := <-done; n != before {
			t.Fatalf("a later goroutine ran at nice %d, want %d", n, before)
		}
	}
}

// TestInBackgroundAddsAProcessor: f runs with one processor more than the
// answers have, and the count is back afterwards, whether the runtime
// chose it or the environment fixed it.
func TestInBackgroundAddsAProcessor(t *testing.T) {
	for _, env := range []string{"", "3"} {
		t.Run("GOMAXPROCS="+env, func(t *testing.T) {
			t.Setenv("GOMAXPROCS", env)
			before := runtime.GOMAXPROCS(0)
			if env != "" {
				runtime.GOMAXPROCS(3)
				before = 3
			}
			defer runtime.SetDefaultGOMAXPROCS()
			var inside int
			inBackground(func() { inside = runtime.GOMAXPROCS(0) })
			if inside != before+1 {
				t.Errorf("GOMAXPROCS inside inBackground = %d, want %d", inside, before+1)
			}
			if after := runtime.GOMAXPROCS(0); after != before {
				t.Errorf("GOMAXPROCS after inBackground = %d, want %d", after, before)
			}
		})
	}
}
