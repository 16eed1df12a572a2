package dnssec

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/dnssec/dnssectest"
)

// iterator is the test recursive upstream over the signed hierarchy.
type iterator = dnssectest.Iterator

var (
	testH       *dnssectest.Hierarchy
	testAnchors *Anchors // testH's root
)

func TestMain(m *testing.M) {
	var err error
	if testH, err = dnssectest.Build(time.Now()); err != nil {
		fmt.Fprintln(os.Stderr, "building the test hierarchy:", err)
		os.Exit(1)
	}
	if testAnchors, err = ParseAnchors(testH.Anchor, "test anchor"); err != nil {
		fmt.Fprintln(os.Stderr, "the test hierarchy's anchor:", err)
		os.Exit(1)
	}
	if err := testH.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "starting the test servers:", err)
		os.Exit(1)
	}
	code := m.Run()
	testH.Stop()
	os.Exit(code)
}
