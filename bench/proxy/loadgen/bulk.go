package main

import (
	"flag"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

func bulk(args []string) error {
	fs := flag.NewFlagSet("bulk", flag.ContinueOnError)
	getDest := destFlags(fs)
	n := fs.Int("n", 1, "tunnels")
	dur := fs.Duration("t", 10*time.Second, "measured time")
	warm := fs.Duration("warm", time.Second, "time pushing before the measurement starts")
	chunk := fs.Int("chunk", 128<<10, "bytes per write")
	pid := fs.Int("pid", 0, "proxy process whose CPU time to measure (0: none)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	d, err := getDest()
	if err != nil {
		return err
	}
	conns := make([]net.Conn, *n)
	for i := range conns {
		c, _, err := d.open(5 * time.Second)
		if err == nil {
			// The first bytes a proxy that inspects tunnels reads; the
			// sink discards them with the rest.
			if _, err = c.Write(d.request); err != nil {
				c.Close()
			}
		}
		if err != nil {
			for _, c := range conns[:i] {
				c.Close()
			}
			return fmt.Errorf("opening tunnel %d: %w", i, err)
		}
		conns[i] = c
	}
	var (
		sent    atomic.Int64
		stopped atomic.Bool
		errs    atomic.Int64
		wg      sync.WaitGroup
	)
	buf := make([]byte, *chunk)
	for _, c := range conns {
		wg.Go(func() {
			for !stopped.Load() {
				m, err := c.Write(buf)
				sent.Add(int64(m))
				if err != nil {
					if !stopped.Load() {
						errs.Add(1)
					}
					return
				}
			}
		})
	}
	time.Sleep(*warm)
	meter := cpuMeter{pid: *pid}
	if err := meter.begin(); err != nil {
		return err
	}
	b0, t0 := sent.Load(), time.Now()
	time.Sleep(*dur)
	b1, t1 := sent.Load(), time.Now()
	cpuS, err := meter.end()
	if err != nil {
		return err
	}
	stopped.Store(true)
	for _, c := range conns {
		c.Close()
	}
	wg.Wait()

	secs := t1.Sub(t0).Seconds()
	bytes := float64(b1 - b0)
	gib := bytes / (1 << 30)
	fmt.Printf("tunnels=%d secs=%.2f bytes=%.0f gbps=%.3f errors=%d", *n, secs, bytes, bytes*8/secs/1e9, errs.Load())
	if cpuS >= 0 {
		fmt.Printf(" cpu_s=%.2f cpu_s_per_gib=%.3f", cpuS, cpuS/gib)
	}
	fmt.Println()
	return nil
}
