package history

import (
	"net/url"
	"testing"
	"time"
)

// FuzzParseFilter: /v1/history's query string is untrusted; parsing it
// never panics, and what it accepts is a filter Query can run.
func FuzzParseFilter(f *testing.F) {
	for _, s := range []string{
		"since=7d&group=office&action=deny&component=dns&name=example.com&source=192.0.2.1&per_day=true&limit=10",
		"since=36h", "since=2026-12-01", "since=0d", "action=maybe", "limit=-1", "source=::1", "per_day=x", "x=1", "since=99999999d",
	} {
		f.Add(s)
	}
	now := time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, raw string) {
		v, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		flt, err := ParseFilter(v, now)
		if err != nil {
			return
		}
		if flt.Limit < 0 || flt.Limit > 100_000 {
			t.Errorf("accepted limit %d", flt.Limit)
		}
	})
}
