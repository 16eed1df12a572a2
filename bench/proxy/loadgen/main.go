// Command loadgen drives the egress-proxy benchmark: loopback backends, and
// clients that reach them through an HTTP CONNECT proxy (or directly).
//
//	loadgen serve  -sink A -echo A -http A     backends, until killed
//	loadgen bulk   -proxy A -target A -n 16    push bytes through n tunnels
//	loadgen short  -proxy A -target A -c 32    dial, CONNECT, 64 B each way, close
//	loadgen idle   -proxy A -target A -n 10000 hold n tunnels, report RSS per tunnel
//	loadgen cpu    -pid P                      CPU seconds of P and its descendants
//	loadgen report FILE                        medians of result lines as markdown
//
// What a tunnel carries first is a 64-byte HTTP/1.1 request head whose
// Host is the target, which a proxy that inspects tunnels lets through;
// the echo backend answers it with the same 64 bytes.
//
// Every measuring mode prints one line of key=value pairs. With -pid, the
// proxy's CPU time (utime+stime of the process and its descendants) is read
// from /proc at the start and end of the measured window. Every address
// must be on loopback: the tool refuses anything else.
package main

import (
	"fmt"
	"os"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage: loadgen serve|bulk|short|idle|cpu|report [flags]")
		return 2
	}
	cmds := map[string]func([]string) error{
		"serve":  serve,
		"bulk":   bulk,
		"short":  short,
		"idle":   idle,
		"cpu":    cpu,
		"report": report,
	}
	f, ok := cmds[args[0]]
	if !ok {
		fmt.Fprintf(os.Stderr, "loadgen: unknown mode %q\n", args[0])
		return 2
	}
	if err := f(args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "loadgen %s: %v\n", args[0], err)
		return 1
	}
	return 0
}
