// Command proxyprof runs the fqdngate daemon exactly as "fqdngate run"
// does, and profiles it in windows chosen from outside, so the egress proxy
// can be profiled under one loadgen workload at a time (the daemon itself
// has no pprof endpoint):
//
//	SIGUSR1  start a CPU profile, PREFIX.N.cpu
//	SIGUSR2  stop it; write PREFIX.N.heap (after a GC) and PREFIX.N.goroutine,
//	         and print the runtime's memory statistics to stderr
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"syscall"

	"github.com/fqdngate/fqdngate/internal/daemon"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	fs := flag.NewFlagSet("proxyprof", flag.ContinueOnError)
	cfg := fs.String("c", "", "policy file")
	prefix := fs.String("o", "proxyprof", "prefix of the profile files")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGUSR1, syscall.SIGUSR2)
	go profileWindows(ctx, sig, *prefix)

	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := daemon.Run(ctx, daemon.Options{PolicyPath: *cfg, Logger: logger, Stdout: os.Stdout}); err != nil {
		fmt.Fprintf(os.Stderr, "proxyprof: %v\n", err)
		return 1
	}
	return 0
}

// profileWindows starts a CPU profile on SIGUSR1 and ends it on SIGUSR2,
// numbering the windows.
func profileWindows(ctx context.Context, sig <-chan os.Signal, prefix string) {
	n := 0
	var cpu *os.File
	for {
		select {
		case <-ctx.Done():
			if cpu != nil {
				pprof.StopCPUProfile()
				cpu.Close()
			}
			return
		case s := <-sig:
			switch {
			case s == syscall.SIGUSR1 && cpu == nil:
				n++
				f, err := os.Create(fmt.Sprintf("%s.%d.cpu", prefix, n))
				if err != nil {
					fmt.Fprintf(os.Stderr, "proxyprof: %v\n", err)
					continue
				}
				if err := pprof.StartCPUProfile(f); err != nil {
					fmt.Fprintf(os.Stderr, "proxyprof: starting the CPU profile: %v\n", err)
					f.Close()
					continue
				}
				cpu = f
			case s == syscall.SIGUSR2:
				if cpu != nil {
					pprof.StopCPUProfile()
					cpu.Close()
					cpu = nil
				}
				writeProfile("heap", fmt.Sprintf("%s.%d.heap", prefix, n))
				writeProfile("goroutine", fmt.Sprintf("%s.%d.goroutine", prefix, n))
				var m runtime.MemStats
				runtime.ReadMemStats(&m)
				fmt.Fprintf(os.Stderr, "proxyprof: window %d: goroutines=%d heap_inuse_mib=%.1f stack_inuse_mib=%.1f sys_mib=%.1f heap_objects=%d gc=%d\n",
					n, runtime.NumGoroutine(), mib(m.HeapInuse), mib(m.StackInuse), mib(m.Sys), m.HeapObjects, m.NumGC)
			}
		}
	}
}

func writeProfile(name, path string) {
	if name == "heap" {
		runtime.GC()
	}
	f, err := os.Create(path)
	if err != nil {
		fmt.Fprintf(os.Stderr, "proxyprof: %v\n", err)
		return
	}
	defer f.Close()
	if err := pprof.Lookup(name).WriteTo(f, 0); err != nil {
		fmt.Fprintf(os.Stderr, "proxyprof: writing %s: %v\n", path, err)
	}
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }
