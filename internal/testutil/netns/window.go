package netns

import (
	"net"
	"sync"
	"testing"
	"time"
)

// reachProbe bounds a probe that must pass: well under the second after
// which TCP sends a lost SYN again.
const reachProbe = 250 * time.Millisecond

// Dialer opens one probe connection within timeout.
type Dialer func(timeout time.Duration) (net.Conn, error)

// OpenWindow measures how long enforcement stays open after tamper breaks
// it at t0: how long after t0 a connection that must be dropped (unlisted)
// is dropped again (closed), and a connection that must pass (learned) is
// let through again (reachable). A probe that fails was dropped when it
// started, since its SYN went out then and a connect that works takes a
// millisecond, not dropTimeout; closed is the start of the first of three
// failures in a row, so that a probe slowed down by a loaded machine does
// not pass for a drop. learned is probed all along, by connects that give
// up well before TCP sends a lost SYN again (a second later): one whose SYN
// the broken table dropped would otherwise succeed only then and hold back
// the next probe, so that reachable came out a second late. reachable is
// the first success that started once the drops were back; a success
// within that timeout means its first SYN passed when it started. Either
// taking longer than limit fails t, with explain's text if explain is not
// nil.
func OpenWindow(t testing.TB, tamper func(), unlisted, learned Dialer, dropTimeout, limit time.Duration, explain func() string) (closed, reachable time.Duration) {
	t.Helper()
	more := func() string {
		if explain == nil {
			return ""
		}
		return "\n" + explain()
	}
	t0 := time.Now()
	tamper()
	deadline := t0.Add(limit)
	var (
		mu        sync.Mutex // guards successes
		successes []time.Duration
		done      = make(chan struct{})
		wg        sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			default:
			}
			start := time.Now()
			if c, err := learned(reachProbe); err == nil {
				c.Close()
				mu.Lock()
				successes = append(successes, start.Sub(t0))
				mu.Unlock()
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	defer func() {
		close(done)
		wg.Wait()
	}()
	for fails := 0; fails < 3; {
		start := time.Now()
		c, err := unlisted(dropTimeout)
		if err == nil {
			c.Close()
			fails = 0
			time.Sleep(2 * time.Millisecond)
		} else if fails++; fails == 1 {
			closed = start.Sub(t0)
		}
		if start.After(deadline) {
			t.Fatalf("traffic that must be dropped still passed %v after the table was broken%s", limit, more())
		}
	}
	for {
		mu.Lock()
		for _, s := range successes {
			if s >= closed {
				mu.Unlock()
				return closed, s
			}
		}
		mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("traffic that must pass was still dropped %v after the table was broken%s", limit, more())
		}
		time.Sleep(5 * time.Millisecond)
	}
}
