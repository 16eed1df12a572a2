package daemon

import (
	"os"
	"testing"
)

// TestMain keeps the decision history, on by default, of every daemon
// the tests start in a directory of their own instead of the machine's
// state directory.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "fqdngate-daemon-state")
	if err != nil {
		panic(err)
	}
	os.Setenv("STATE_DIRECTORY", dir)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
