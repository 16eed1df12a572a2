package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Phases of a timed run: results count only while measuring.
const (
	warming int32 = iota
	measuring
	done
)

func short(args []string) error {
	fs := flag.NewFlagSet("short", flag.ContinueOnError)
	getDest := destFlags(fs)
	c := fs.Int("c", 32, "concurrency: clients each running one tunnel after another")
	dur := fs.Duration("t", 10*time.Second, "measured time")
	warm := fs.Duration("warm", time.Second, "time running before the measurement starts")
	timeout := fs.Duration("timeout", 5*time.Second, "bound on one tunnel")
	pid := fs.Int("pid", 0, "proxy process whose CPU time to measure (0: none)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	d, err := getDest()
	if err != nil {
		return err
	}
	var (
		phase    atomic.Int32
		errCount atomic.Int64
		firstErr atomic.Value
		wg       sync.WaitGroup
	)
	lats := make([][]time.Duration, *c)
	for w := range *c {
		wg.Go(func() {
			for {
				p := phase.Load()
				if p == done {
					return
				}
				t0 := time.Now()
				err := oneShort(d, *timeout)
				lat := time.Since(t0)
				if phase.Load() != measuring {
					continue
				}
				if err != nil {
					errCount.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				lats[w] = append(lats[w], lat)
			}
		})
	}
	time.Sleep(*warm)
	meter := cpuMeter{pid: *pid}
	if err := meter.begin(); err != nil {
		return err
	}
	t0 := time.Now()
	phase.Store(measuring)
	time.Sleep(*dur)
	phase.Store(done)
	secs := time.Since(t0).Seconds()
	cpuS, err := meter.end()
	if err != nil {
		return err
	}
	wg.Wait()

	all := slices.Concat(lats...)
	slices.Sort(all)
	pct := func(p float64) float64 {
		if len(all) == 0 {
			return 0
		}
		return float64(all[int(p*float64(len(all)-1))].Microseconds()) / 1000
	}
	n := len(all)
	fmt.Printf("c=%d secs=%.2f tunnels=%d per_s=%.0f p50_ms=%.3f p99_ms=%.3f errors=%d",
		*c, secs, n, float64(n)/secs, pct(0.50), pct(0.99), errCount.Load())
	if cpuS >= 0 && n > 0 {
		fmt.Printf(" cpu_s=%.2f cpu_ms_per_1000=%.1f", cpuS, cpuS*1000/float64(n)*1000)
	}
	fmt.Println()
	if e := firstErr.Load(); e != nil {
		fmt.Printf("# first error: %s\n", e)
	}
	return nil
}

// oneShort is one short tunnel: connect, send the 64-byte request head,
// read the 64-byte reply (its echo), close.
func oneShort(d dest, timeout time.Duration) error {
	c, extra, err := d.open(timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	return exchange(c, d.request, extra)
}

// exchange sends request and reads its echo, of which extra was read
// already.
func exchange(c net.Conn, request, extra []byte) error {
	if _, err := c.Write(request); err != nil {
		return err
	}
	var reply [msgSize]byte
	n := copy(reply[:], extra)
	if _, err := io.ReadFull(c, reply[n:]); err != nil {
		return err
	}
	if !bytes.Equal(reply[:], request) {
		return errors.New("reply is not the request echoed")
	}
	return nil
}
