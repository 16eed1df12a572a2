// Command fqdngate is a domain-name based egress firewall: a DNS firewall,
// nftables enforcement that follows DNS, and an egress proxy, driven by one
// YAML policy.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
