package explain

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/fqdngate/fqdngate/internal/policy"
)

func TestParseTarget(t *testing.T) {
	tests := []struct {
		in      string
		want    Target
		wantErr string
	}{
		{in: "api.bank.example", want: Target{Name: "api.bank.example", Port: 443}},
		{in: "API.Bank.Example.:8443", want: Target{Name: "api.bank.example", Port: 8443}},
		{in: "dns.example:853/udp", want: Target{Name: "dns.example", Port: 853, Proto: policy.UDP}},
		{in: "bücher.example", want: Target{Name: "xn--bcher-kva.example", Port: 443}},
		{in: "203.0.113.7:5432", want: Target{Addr: netip.MustParseAddr("203.0.113.7"), Port: 5432}},
		{in: "[2001:db8::1]:443/tcp", want: Target{Addr: netip.MustParseAddr("2001:db8::1"), Port: 443}},
		{in: "2001:db8::1", want: Target{Addr: netip.MustParseAddr("2001:db8::1"), Port: 443}},
		{in: "a.example:0", wantErr: "port must be 1 to 65535"},
		{in: "a.example:70000", wantErr: "port must be 1 to 65535"},
		{in: "a.example:443/sctp", wantErr: "protocol must be tcp or udp"},
		{in: "bad..name", wantErr: "empty label"},
	}
	for _, tt := range tests {
		got, err := ParseTarget(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseTarget(%q): got error %v, want one containing %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseTarget(%q): got %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
}

func TestExplainText(t *testing.T) {
	p, err := policy.Parse("t.yaml", []byte(`listen: {dns: "", proxy: "", admin: ""}
sources: {payments: [10.1.0.0/24]}
rules:
  - name: bank-api
    from: [payments]
    to: ["*.bank.example"]
`))
	if err != nil {
		t.Fatal(err)
	}
	res, err := Explain(p, "10.1.0.7", "api.bank.example:80")
	if err != nil {
		t.Fatal(err)
	}
	got := res.Text()
	for _, w := range []string{"DENY: 10.1.0.7 -> api.bank.example port 80/tcp", "source groups: payments", "not on this port", "closest: rule bank-api (pattern *.bank.example)"} {
		if !strings.Contains(got, w) {
			t.Errorf("text lacks %q:\n%s", w, got)
		}
	}
	if _, err := Explain(p, "not-an-ip", "a.example"); err == nil {
		t.Error("a source that is not an IP must be an error")
	}
}
