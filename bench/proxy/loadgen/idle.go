package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

func idle(args []string) error {
	fs := flag.NewFlagSet("idle", flag.ContinueOnError)
	getDest := destFlags(fs)
	n := fs.Int("n", 10000, "tunnels to open and hold")
	par := fs.Int("p", 64, "tunnels being opened at once")
	warmN := fs.Int("warm", 200, "short tunnels run before the baseline is taken")
	settle := fs.Duration("settle", 3*time.Second, "wait after the last tunnel opened before reading RSS")
	hold := fs.Duration("hold", 0, "keep the tunnels this much longer (for profiling)")
	pid := fs.Int("pid", 0, "proxy process whose RSS to measure (0: none)")
	maxErr := fs.Int64("maxerr", 50, "stop opening tunnels after this many have failed")
	if err := fs.Parse(args); err != nil {
		return err
	}
	d, err := getDest()
	if err != nil {
		return err
	}
	for range *warmN {
		if err := oneShort(d, 5*time.Second); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
	}
	time.Sleep(time.Second)
	var base int64
	if *pid != 0 {
		if base, err = procRSS(*pid); err != nil {
			return err
		}
	}

	conns := make([]net.Conn, *n)
	var (
		next, errs atomic.Int64
		firstErr   atomic.Value
		wg         sync.WaitGroup
	)
	t0 := time.Now()
	for range *par {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= *n || errs.Load() >= *maxErr {
					return
				}
				// A tunnel in use, then idle: the first exchange is what
				// a proxy that inspects tunnels reads before carrying one.
				c, extra, err := d.open(10 * time.Second)
				if err == nil {
					c.SetDeadline(time.Now().Add(10 * time.Second))
					if err = exchange(c, d.request, extra); err != nil {
						c.Close()
					}
					c.SetDeadline(time.Time{})
				}
				if err != nil {
					errs.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				conns[i] = c
			}
		})
	}
	wg.Wait()
	openS := time.Since(t0).Seconds()
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	time.Sleep(*settle)
	var loaded int64
	if *pid != 0 {
		if loaded, err = procRSS(*pid); err != nil {
			return err
		}
	}
	time.Sleep(*hold)

	// Prove the tunnels were real: every one still carries an exchange.
	var alive atomic.Int64
	next.Store(0)
	for range *par {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= *n {
					return
				}
				c := conns[i]
				if c == nil {
					continue
				}
				c.SetDeadline(time.Now().Add(10 * time.Second))
				if exchange(c, d.request, nil) == nil {
					alive.Add(1)
				}
			}
		})
	}
	wg.Wait()

	opened := 0
	for _, c := range conns {
		if c != nil {
			opened++
		}
	}
	fmt.Printf("tunnels=%d opened=%d alive=%d open_s=%.2f errors=%d", *n, opened, alive.Load(), openS, errs.Load())
	if *pid != 0 && opened > 0 {
		fmt.Printf(" rss_base_mib=%.1f rss_mib=%.1f kib_per_tunnel=%.2f",
			float64(base)/(1<<20), float64(loaded)/(1<<20), float64(loaded-base)/1024/float64(opened))
	}
	fmt.Println()
	if e := firstErr.Load(); e != nil {
		fmt.Printf("# first error: %s\n", e)
	}
	if alive.Load() < int64(opened) {
		return errors.New("some tunnels did not carry an exchange after the measurement")
	}
	return nil
}
