package proxy

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// A source group that observes (observe_until in the future) has what the
// policy denies it tunnelled and logged as would-deny, naming the group;
// the same policy with the date past refuses.
func TestObservingGroup(t *testing.T) {
	echo := echoServer(t, "127.0.0.1:0")
	for _, tt := range []struct {
		name, until string
		wantStatus  int
		wantLine    string
	}{
		{"observing", time.Now().Add(time.Hour).UTC().Format(time.RFC3339), 200, `"action":"would-deny","rule":"","reason":"no rule allows this destination","observing":"local"`},
		{"past", "2020-01-31", 403, `"action":"deny"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			pol := fmt.Sprintf(`
proxy: {deny_private: false}
sources:
  local: {cidrs: [127.0.0.0/8], observe_until: %s}
rules:
  - name: open
    from: [local]
    to: [open.test]
    ports: [%d]
`, tt.until, echo.Port())
			h := startProxy(t, pol, mapResolver{"unlisted.test": addrs("127.0.0.1")})
			r := connectVia(t, h.addr, "", fmt.Sprintf("unlisted.test:%d", echo.Port()), "")
			if r.status != tt.wantStatus {
				t.Fatalf("CONNECT unlisted.test: got %d, want %d", r.status, tt.wantStatus)
			}
			if r.status == 200 {
				r.echo(t)
			}
			r.conn.Close()
			waitFor(t, "an audit line", func() bool { return len(h.auditLines(`"name":"unlisted.test"`)) > 0 })
			if l := h.auditLines(`"name":"unlisted.test"`)[0]; !strings.Contains(l, tt.wantLine) {
				t.Errorf("audit line %s: want it to contain %s", l, tt.wantLine)
			}
		})
	}
}
