// Command fqdngateprof runs the fqdngate daemon exactly as "fqdngate run"
// does, but writes a CPU profile of the whole run (and a heap profile at
// the end) so the DNS firewall can be profiled under dnsperf load; the
// daemon itself has no pprof endpoint.
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
	fs := flag.NewFlagSet("fqdngateprof", flag.ContinueOnError)
	cfg := fs.String("c", "", "policy file")
	cpu := fs.String("cpuprofile", "cpu.pprof", "write the CPU profile here")
	heap := fs.String("memprofile", "", "write a heap profile here at exit (empty: none)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	f, err := os.Create(*cpu)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fqdngateprof: %v\n", err)
		return 1
	}
	defer f.Close()
	if err := pprof.StartCPUProfile(f); err != nil {
		fmt.Fprintf(os.Stderr, "fqdngateprof: starting the CPU profile: %v\n", err)
		return 1
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	hup := make(chan os.Signal, 1) // SIGHUP reloads, as with fqdngate run
	signal.Notify(hup, syscall.SIGHUP)
	err = daemon.Run(ctx, daemon.Options{PolicyPath: *cfg, Logger: logger, Stdout: os.Stdout, Reload: hup})
	pprof.StopCPUProfile()
	if err != nil {
		fmt.Fprintf(os.Stderr, "fqdngateprof: %v\n", err)
		return 1
	}
	if *heap != "" {
		h, err := os.Create(*heap)
		if err != nil {
			fmt.Fprintf(os.Stderr, "fqdngateprof: %v\n", err)
			return 1
		}
		defer h.Close()
		runtime.GC()
		if err := pprof.WriteHeapProfile(h); err != nil {
			fmt.Fprintf(os.Stderr, "fqdngateprof: writing the heap profile: %v\n", err)
			return 1
		}
	}
	return 0
}
