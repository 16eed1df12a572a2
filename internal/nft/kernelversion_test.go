package nft

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/fqdngate/fqdngate/internal/policy"
)

func TestTimeoutUpdates(t *testing.T) {
	tests := []struct {
		release string
		want    bool
	}{
		{"6.18.0-1-amd64", true},
		{"6.10.0", true},
		{"6.10", true},
		{"6.9.12-arch1-1", false},
		{"6.1.0-28-cloud-amd64", false},
		{"5.15.0-1064-azure", false},
		{"4.19.325", false},
		{"7.0.0", true},
		{"6.10-rc1", true},
		{"6.", false},
		{"", false},
		{"garbage", false},
		{"v6.12", false},
	}
	for _, tt := range tests {
		if got := timeoutUpdates(tt.release); got != tt.want {
			t.Errorf("timeoutUpdates(%q) = %v, want %v", tt.release, got, tt.want)
		}
	}
	if r := kernelRelease(); r == "" {
		t.Error("kernelRelease() is empty")
	}
}

// TestExtendByReplace runs the old-kernel path on this kernel: an element
// extended by a delete and an add in one transaction stays open past its
// first timeout, and a connection never sees it missing.
func TestExtendByReplace(t *testing.T) {
	n := newForwardNet(t)
	b := startBackend(t, n.gw, Config{Hook: policy.HookForward}, mustParse(t, forwardPolicy))
	// Before any Publish, so no transaction has read them.
	b.replaceToExtend, b.elems.expiration = true, false

	publish(t, b, "bank-api", "payments", srvA, 2*time.Second)
	publish(t, b, "bank-api", "payments", srvA, 6*time.Second)
	if got, want := kernelElems(t, n.gw, "learn4.bank-api.payments"), []string{srvA}; len(got) != 1 || got[0] != want[0] {
		t.Fatalf("kernel holds %v, want %v", got, want)
	}
	time.Sleep(2500 * time.Millisecond)
	checkReach(t, n.client, []reach{{srcPayments, srvA, "443", true}})

	// Within deleteMargin of its expiry the element is not deleted (it
	// could be gone by the time the kernel sees the delete); a plain add
	// is sent, and Publish still succeeds.
	publish(t, b, "bank-api", "payments", srvB, 500*time.Millisecond) // programmed for 1.5s
	time.Sleep(700 * time.Millisecond)
	publish(t, b, "bank-api", "payments", srvB, time.Minute)
	// If the element left the kernel behind the backend's back, the delete
	// fails; the transaction is retried without it.
	n.gw.MustExec("nft", "flush", "set", "inet", "fqdngate", "learn4.bank-api.payments")
	publish(t, b, "bank-api", "payments", srvA, time.Minute)
	checkReach(t, n.client, []reach{{srcPayments, srvA, "443", true}})
	if got := b.retriedWithoutDeletes.Load(); got != 1 {
		t.Errorf("%d transactions retried without deletes, want 1 (was the delete sent?)", got)
	}
}

// TestApplyErrNamesObserveUntil: a kernel without meta time (before 5.4)
// refuses the transaction with EOPNOTSUPP; the error must name the
// policy key behind it, and only when the ruleset has a deadline.
func TestApplyErrNamesObserveUntil(t *testing.T) {
	refused := fmt.Errorf("conn.Receive: %w", &netlink.OpError{Op: "receive", Err: unix.EOPNOTSUPP})
	observing := &desired{chains: []chainSpec{{name: "out", rules: []ruleSpec{{matches: []match{{kind: saddrIn}, {kind: timeBefore, until: time.Now()}}}}}}}
	enforcing := &desired{chains: []chainSpec{{name: "out", rules: []ruleSpec{{matches: []match{{kind: saddrIn}}}}}}}
	tests := []struct {
		name string
		d    *desired
		err  error
		hint bool
	}{
		{"observing, not supported", observing, refused, true},
		{"enforcing, not supported", enforcing, refused, false},
		{"observing, another error", observing, fmt.Errorf("conn.Receive: %w", &netlink.OpError{Op: "receive", Err: unix.ENOENT}), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := applyErr(tt.d, "fqdngate", tt.err)
			if !errors.Is(err, tt.err) {
				t.Errorf("applyErr does not wrap %v: %v", tt.err, err)
			}
			if got := strings.Contains(err.Error(), "observe_until needs"); got != tt.hint {
				t.Errorf("hint %v, want %v: %v", got, tt.hint, err)
			}
			if !strings.Contains(err.Error(), "previous rules stay in force") {
				t.Errorf("error does not say the old rules stand: %v", err)
			}
		})
	}
}
