package fleet

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/dnsname"
	"github.com/fqdngate/fqdngate/internal/learn"
)

var parseCases = []struct {
	name, key, value string
	want             *learn.Entry // nil: malformed
}{
	{"ipv4 with group", "api.bank.example/192.0.2.1/bank/payments", "001800000000",
		&learn.Entry{Name: "api.bank.example", Addr: netip.MustParseAddr("192.0.2.1"), Rule: "bank", Group: "payments", Expires: time.Unix(1800000000, 0).UTC()}},
	{"ipv6 without group", "public.example/2001:db8::1/everyone/", "001800000001",
		&learn.Entry{Name: "public.example", Addr: netip.MustParseAddr("2001:db8::1"), Rule: "everyone", Expires: time.Unix(1800000001, 0).UTC()}},
	{"three parts", "public.example/192.0.2.1/everyone", "001800000000", nil},
	{"five parts", "public.example/192.0.2.1/everyone//x", "001800000000", nil},
	{"upper-case name", "Public.example/192.0.2.1/everyone/", "001800000000", nil},
	{"trailing dot", "public.example./192.0.2.1/everyone/", "001800000000", nil},
	{"bad name", "pub lic.example/192.0.2.1/everyone/", "001800000000", nil},
	{"empty name", "/192.0.2.1/everyone/", "001800000000", nil},
	{"mapped address", "public.example/::ffff:192.0.2.1/everyone/", "001800000000", nil},
	{"uncanonical ipv6", "public.example/2001:DB8::1/everyone/", "001800000000", nil},
	{"zone", "public.example/fe80::1%eth0/everyone/", "001800000000", nil},
	{"not an address", "public.example/192.0.2/everyone/", "001800000000", nil},
	{"empty rule", "public.example/192.0.2.1//", "001800000000", nil},
	{"short value", "public.example/192.0.2.1/everyone/", "1800000000", nil},
	{"json value", "public.example/192.0.2.1/everyone/", `{"exp":18000}`, nil},
	{"signed value", "public.example/192.0.2.1/everyone/", "-01800000000", nil},
	{"empty value", "public.example/192.0.2.1/everyone/", "", nil},
}

func TestParseElement(t *testing.T) {
	for _, tc := range parseCases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseElement(tc.key, []byte(tc.value))
			if tc.want == nil {
				if !errors.Is(err, errMalformed) {
					t.Fatalf("got %+v, %v; want a malformed error", got, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("got error %v, want %+v", err, *tc.want)
			}
			if got != *tc.want {
				t.Fatalf("got %+v, want %+v", got, *tc.want)
			}
			// The writer's spelling is the only one.
			if k := string(appendKey(nil, got.Name, got.Addr, got.Rule, got.Group)); k != tc.key {
				t.Errorf("key written back: got %q, want %q", k, tc.key)
			}
			if v := encodeExpiry(got.Expires.Unix()); v != tc.value {
				t.Errorf("value written back: got %q, want %q", v, tc.value)
			}
		})
	}
}

// TestExpiryOrder: etcd compares values byte by byte; encoded expiries
// must compare as the numbers do.
func TestExpiryOrder(t *testing.T) {
	secs := []int64{0, 9, 10, 99, 1800000000, 1800000001, 9999999999}
	for i := range secs {
		for j := range secs {
			a, b := encodeExpiry(secs[i]), encodeExpiry(secs[j])
			if (a < b) != (secs[i] < secs[j]) {
				t.Errorf("%d vs %d: encoded %q vs %q compare the other way", secs[i], secs[j], a, b)
			}
		}
	}
}

// FuzzParseElement: whatever etcd holds, parsing never panics, and what
// it accepts is exactly what the writer would write for it.
func FuzzParseElement(f *testing.F) {
	for _, tc := range parseCases {
		f.Add(tc.key, []byte(tc.value))
	}
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		e, err := parseElement(key, value)
		if err != nil {
			return
		}
		if _, err := dnsname.Parse(string(e.Name)); err != nil {
			t.Fatalf("accepted name %q: %v", e.Name, err)
		}
		if k := string(appendKey(nil, e.Name, e.Addr, e.Rule, e.Group)); k != key {
			t.Fatalf("accepted %q, which the writer would spell %q", key, k)
		}
		if v := encodeExpiry(e.Expires.Unix()); v != string(value) {
			t.Fatalf("accepted value %q, which the writer would spell %q", value, v)
		}
	})
}

var batchCases = []struct {
	name, value string
	want        int // elements; -1: malformed
}{
	{"one", batchHeader + "public.example/192.0.2.1/everyone/ 001800000000\n", 1},
	{"two", batchHeader + "public.example/192.0.2.1/everyone/ 001800000000\napi.bank.example/2001:db8::1/bank/payments 001800000001\n", 2},
	{"empty", "", -1},
	{"header only", batchHeader, -1},
	{"other version", "fqdngate-learned 2\npublic.example/192.0.2.1/everyone/ 001800000000\n", -1},
	{"no header", "public.example/192.0.2.1/everyone/ 001800000000\n", -1},
	{"no final newline", batchHeader + "public.example/192.0.2.1/everyone/ 001800000000", -1},
	{"empty line", batchHeader + "public.example/192.0.2.1/everyone/ 001800000000\n\n", -1},
	{"crlf", batchHeader + "public.example/192.0.2.1/everyone/ 001800000000\r\n", -1},
	{"one bad line spoils the batch", batchHeader + "public.example/192.0.2.1/everyone/ 001800000000\nPublic.example/192.0.2.2/everyone/ 001800000000\n", -1},
	{"short expiry", batchHeader + "public.example/192.0.2.1/everyone/ 1800000000\n", -1},
	{"tab", batchHeader + "public.example/192.0.2.1/everyone/\t001800000000\n", -1},
	{"two spaces", batchHeader + "public.example/192.0.2.1/everyone/  001800000000\n", -1},
	{"no expiry", batchHeader + "public.example/192.0.2.1/everyone/\n", -1},
	{"too many", batchHeader + strings.Repeat("public.example/192.0.2.1/everyone/ 001800000000\n", maxBatch+1), -1},
	{"most", batchHeader + strings.Repeat("public.example/192.0.2.1/everyone/ 001800000000\n", maxBatch), maxBatch},
	{"too long", batchHeader + strings.Repeat("x", maxBatchBytes), -1},
}

func TestParseBatch(t *testing.T) {
	for _, tc := range batchCases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseBatch([]byte(tc.value))
			if tc.want < 0 {
				if !errors.Is(err, errMalformed) || got != nil {
					t.Fatalf("got %d elements, %v; want a malformed error and none", len(got), err)
				}
				return
			}
			if err != nil || len(got) != tc.want {
				t.Fatalf("got %d elements, %v; want %d", len(got), err, tc.want)
			}
			// The writer's spelling is the only one.
			b := []byte(batchHeader)
			for _, el := range got {
				b = appendBatchLine(b, el.key, el.e.Expires.Unix())
			}
			if string(b) != tc.value {
				t.Errorf("written back as %q, want %q", b, tc.value)
			}
		})
	}
}

func TestParseBatchKey(t *testing.T) {
	for _, tc := range []struct {
		key, node string
	}{
		{batchKey("gw-a", 1, 2), "gw-a"},
		{batchKey("a", 0x188e1c0a2b3c4d5e, 1<<63), "a"},
		{"gw-a/0000000000000001000000000000000", ""},   // short
		{"gw-a/00000000000000010000000000000002x", ""}, // long
		{"gw-a/0000000000000001000000000000000A", ""},  // upper case
		{"/00000000000000010000000000000002", ""},      // no node
		{"public.example/192.0.2.1/everyone/", ""},     // the per-element keys of before
		{"gw-a", ""},
	} {
		node, ok := parseBatchKey(tc.key)
		if node != tc.node || ok != (tc.node != "") {
			t.Errorf("parseBatchKey(%q) = %q, %v; want %q", tc.key, node, ok, tc.node)
		}
	}
}

// FuzzParseBatch: whatever a batch holds, parsing never panics, stays in
// its bounds, and what it accepts is exactly what the writer would write.
func FuzzParseBatch(f *testing.F) {
	for _, tc := range batchCases {
		if len(tc.value) < 4096 {
			f.Add([]byte(tc.value))
		}
	}
	f.Fuzz(func(t *testing.T, value []byte) {
		got, err := parseBatch(value)
		if err != nil {
			if got != nil {
				t.Fatalf("malformed batch, but %d elements returned", len(got))
			}
			return
		}
		if len(got) == 0 || len(got) > maxBatch {
			t.Fatalf("accepted %d elements", len(got))
		}
		b := []byte(batchHeader)
		for _, el := range got {
			if k := string(appendKey(nil, el.e.Name, el.e.Addr, el.e.Rule, el.e.Group)); k != el.key {
				t.Fatalf("element key %q, which the writer would spell %q", el.key, k)
			}
			b = appendBatchLine(b, el.key, el.e.Expires.Unix())
		}
		if string(b) != string(value) {
			t.Fatalf("accepted %q, which the writer would spell %q", value, b)
		}
	})
}
