package main

import (
	"context"
	"fmt"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/admin"
	"github.com/fqdngate/fqdngate/internal/dnsname"
	"github.com/fqdngate/fqdngate/internal/learn"
	"github.com/fqdngate/fqdngate/internal/policy"
)

// TestFirewallShowLearned pages through a real admin endpoint's learned
// addresses, small pages so that it takes several, with the filters.
func TestFirewallShowLearned(t *testing.T) {
	p, err := policy.Parse("t.yaml", []byte("rules: [{name: web, to: [a.example]}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	s := learn.NewStore(learn.StoreConfig{})
	exp := time.Now().Add(time.Hour)
	var batch []learn.Entry
	for i := range 250 {
		batch = append(batch, learn.Entry{Name: dnsname.Name(fmt.Sprintf("n%d.example", i%25)), Rule: "web", Addr: netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), Expires: exp})
	}
	if err := s.Publish(context.Background(), batch); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(admin.Handler(admin.Config{Policy: func() *policy.Policy { return p }, Learned: s.All}))
	t.Cleanup(srv.Close)

	tests := []struct {
		args      []string
		code      int
		lines     int // of addresses
		contains  []string
		errSubstr string
	}{
		{args: []string{"--learned", "--admin", srv.URL, "--page", "7"}, lines: 250, contains: []string{"192.0.2.0 ", "192.0.2.249 ", "n3.example", "250 learned addresses"}},
		{args: []string{"--admin", srv.URL, "--name", "n3.example", "--page", "3"}, lines: 10, contains: []string{"192.0.2.3 ", "192.0.2.228 ", "10 learned addresses"}},
		{args: []string{"--admin", srv.URL, "--addr", "192.0.2.16/28"}, lines: 16, contains: []string{"192.0.2.31 "}},
		{args: []string{"--admin", srv.URL, "--rule", "other"}, lines: 0, contains: []string{"0 learned addresses"}},
		{args: []string{"--admin", srv.URL, "--addr", "a.example"}, code: 2, errSubstr: "--addr"},
		{args: []string{"--admin", srv.URL, "--page", "0"}, code: 2, errSubstr: "--page 0"},
		{args: []string{"--learned"}, code: 2, errSubstr: "give --admin"},
		{args: []string{"--admin", "127.0.0.1:1"}, code: 2, errSubstr: "not a URL"},
		{args: []string{"--admin", srv.URL, "--name", "bad..name"}, code: 1, errSubstr: "400 Bad Request: name="},
	}
	for _, tt := range tests {
		var out, errb strings.Builder
		code := run(context.Background(), append([]string{"firewall", "show"}, tt.args...), &out, &errb)
		if code != tt.code || !strings.Contains(errb.String(), tt.errSubstr) {
			t.Errorf("%q: exit %d, stderr %q; want %d, %q", tt.args, code, errb.String(), tt.code, tt.errSubstr)
			continue
		}
		if code != 0 {
			continue
		}
		if got := strings.Count(out.String(), "\n192.0.2."); got != tt.lines {
			t.Errorf("%q: %d address lines, want %d:\n%s", tt.args, got, tt.lines, out.String())
		}
		for _, c := range tt.contains {
			if !strings.Contains(out.String(), c) {
				t.Errorf("%q: output lacks %q:\n%s", tt.args, c, out.String())
			}
		}
	}
}
