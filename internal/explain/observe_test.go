package explain

import (
	"strings"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/policy"
)

func TestExplainObserving(t *testing.T) {
	p, err := policy.Parse("p.yaml", []byte(`listen: {dns: "", proxy: "", admin: ""}
sources:
  payments: {cidrs: [10.1.0.0/24], observe_until: 2027-01-31}
rules:
  - name: bank
    from: [payments]
    to: api.bank.example
`))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2027, 1, 20, 0, 0, 0, 0, time.UTC)
	p.SetClock(func() time.Time { return now })
	r, err := Explain(p, "10.1.0.7", "evil.example:443", nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.Action != "would-deny" || r.Observing != "payments" || len(r.Observe) != 1 || !r.Observe[0].Observing {
		t.Fatalf("got %+v, want would-deny observed by payments", r)
	}
	text := r.Text()
	for _, want := range []string{"WOULD-DENY", "source group payments observes", "group payments observes until 2027-02-01T00:00:00Z (observe_until: 2027-01-31)"} {
		if !strings.Contains(text, want) {
			t.Errorf("text has no %q:\n%s", want, text)
		}
	}
	now = time.Date(2027, 2, 1, 0, 0, 0, 0, time.UTC)
	r, _ = Explain(p, "10.1.0.7", "evil.example:443", nil)
	if r.Action != "deny" || r.Observing != "" || len(r.Observe) != 1 || r.Observe[0].Observing {
		t.Fatalf("after the date: got %+v, want deny, enforced", r)
	}
	if text := r.Text(); !strings.Contains(text, "group payments is enforced since 2027-02-01T00:00:00Z") {
		t.Errorf("after the date, text:\n%s", text)
	}
}
