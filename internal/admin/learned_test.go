package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/dnsname"
	"github.com/fqdngate/fqdngate/internal/learn"
	"github.com/fqdngate/fqdngate/internal/policy"
)

// TestLearnedPages pages through 2,500 learned addresses of a real store
// over HTTP, with and without filters, and refuses bad requests.
func TestLearnedPages(t *testing.T) {
	p, err := policy.Parse("t.yaml", []byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	s := learn.NewStore(learn.StoreConfig{})
	exp := time.Now().Add(time.Hour)
	var batch []learn.Entry
	for i := range 2500 {
		a := netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)})
		if i%2 == 1 {
			a = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 14: byte(i >> 8), 15: byte(i)})
		}
		batch = append(batch, learn.Entry{Name: dnsname.Name(fmt.Sprintf("n%d.example", i%250)), Rule: []string{"bank-api", "web"}[i%3/2], Group: "payments", Addr: a, Expires: exp})
	}
	if err := s.Publish(context.Background(), batch); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(Handler(Config{Policy: func() *policy.Policy { return p }, Learned: s.All}))
	t.Cleanup(srv.Close)

	all := func(q url.Values) (entries []LearnedEntry, pages int) {
		t.Helper()
		for {
			code, body := get(t, srv.URL+"/v1/learned?"+q.Encode())
			if code != 200 {
				t.Fatalf("%s: %d %s", q.Encode(), code, body)
			}
			var pg LearnedPage
			if err := json.Unmarshal([]byte(body), &pg); err != nil {
				t.Fatalf("%s: %v in %s", q.Encode(), err, body)
			}
			entries = append(entries, pg.Learned...)
			pages++
			if pg.Next == "" {
				return entries, pages
			}
			q.Set("after", pg.Next)
		}
	}
	tests := []struct {
		query     string
		want      func(learn.Entry) bool
		wantPages int
	}{
		{"", func(learn.Entry) bool { return true }, 3}, // default limit 1000
		{"limit=700", func(learn.Entry) bool { return true }, 4},
		{"limit=10000&rule=web", func(e learn.Entry) bool { return e.Rule == "web" }, 1},
		{"name=N7.Example.&limit=3", func(e learn.Entry) bool { return e.Name == "n7.example" }, 4},
		{"addr=198.51.0.0/24&group=payments", func(e learn.Entry) bool { return e.Addr.Is4() && e.Addr.As4()[2] == 0 }, 1},
		{"addr=2001:db8::2:1", func(e learn.Entry) bool { return e.Addr == netip.MustParseAddr("2001:db8::2:1") }, 1},
		{"group=office", func(learn.Entry) bool { return false }, 1},
	}
	for _, tt := range tests {
		q, _ := url.ParseQuery(tt.query)
		got, pages := all(q)
		want := 0
		for _, e := range batch {
			if tt.want(e) {
				want++
			}
		}
		if len(got) != want || pages != tt.wantPages {
			t.Errorf("%q: got %d entries in %d pages, want %d in %d", tt.query, len(got), pages, want, tt.wantPages)
		}
		for i := 1; i < len(got); i++ {
			if got[i].Address.Less(got[i-1].Address) {
				t.Errorf("%q: %s after %s", tt.query, got[i].Address, got[i-1].Address)
			}
		}
		for _, e := range got {
			if !tt.want(learn.Entry{Name: dnsname.Name(e.Name), Rule: e.Rule, Group: e.Group, Addr: e.Address}) || e.Expires == "" || e.ExpiresIn == "" {
				t.Errorf("%q: listed %+v", tt.query, e)
				break
			}
		}
	}

	for _, bad := range []string{"limit=0", "limit=10001", "limit=x", "after=nonsense", "name=-bad-.example", "addr=example.com"} {
		code, body := get(t, srv.URL+"/v1/learned?"+bad)
		if code != 400 || !strings.Contains(body, `"error"`) {
			t.Errorf("%s: got %d %s, want 400 with an error", bad, code, body)
		}
	}
}
