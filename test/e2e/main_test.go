// Package e2e runs the fqdngate binary as a real process in Linux network
// namespaces and checks, from client sockets, what the kernel lets through:
// the DNS firewall, the nftables backend and the daemon's reload and restart
// behaviour, together.
//
// Every test builds its own namespaces (named after the test process's pid)
// and its own nftables table inside them, so tests of other packages running
// at the same time are never touched. The tests need root; under CI=true
// they fail instead of skipping.
package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// binary is fqdngate, built once, as released: static, without cgo.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "fqdngate-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "fqdngate")
	// The decision history, on by default, goes here, not to the
	// machine's state directory.
	os.Setenv("STATE_DIRECTORY", dir)
	build := exec.Command("go", "build", "-o", binary, "github.com/fqdngate/fqdngate/cmd/fqdngate")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building fqdngate: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
