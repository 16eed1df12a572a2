package dnssec

import (
	"fmt"
	"strings"

	"github.com/miekg/dns"
)

// RootAnchors are the built-in trust anchors: the DS records of the root
// zone's KSK-2017 (key tag 20326) and KSK-2024 (key tag 38696), as IANA
// publishes them (https://data.iana.org/root-anchors/root-anchors.xml).
const RootAnchors = `. IN DS 20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D
. IN DS 38696 8 2 683D2D0ACB8C9B712A1948B27F741219298D0A450D612C483AF444A4C0FB2B16
`

// Anchors are trust anchors for one or more zones: DS or DNSKEY records.
type Anchors struct {
	ds   map[string][]*dns.DS
	keys map[string][]*dns.DNSKEY
}

// ParseAnchors reads trust anchors in presentation format (the zone-file
// form of DS and DNSKEY records; comments and $ORIGIN/$TTL allowed). file
// names the source in errors. Records of any other type are an error, as is
// a text with no anchor at all.
func ParseAnchors(text, file string) (*Anchors, error) {
	a := &Anchors{ds: map[string][]*dns.DS{}, keys: map[string][]*dns.DNSKEY{}}
	zp := dns.NewZoneParser(strings.NewReader(text), ".", file)
	n := 0
	for rr, ok := zp.Next(); ok; rr, ok = zp.Next() {
		name := dns.CanonicalName(rr.Header().Name)
		switch r := rr.(type) {
		case *dns.DS:
			a.ds[name] = append(a.ds[name], r)
		case *dns.DNSKEY:
			if r.Flags&dns.ZONE == 0 || r.Protocol != 3 {
				return nil, fmt.Errorf("%s: trust anchor %s: DNSKEY without the zone key flag (256) or protocol 3; write the zone's KSK (flags 257)", file, name)
			}
			a.keys[name] = append(a.keys[name], r)
		default:
			return nil, fmt.Errorf("%s: trust anchor %s: record type %s is not an anchor; write DS or DNSKEY records", file, name, dns.TypeToString[rr.Header().Rrtype])
		}
		n++
	}
	if err := zp.Err(); err != nil {
		return nil, fmt.Errorf("reading trust anchors: %w; write DS or DNSKEY records in zone-file form", err)
	}
	if n == 0 {
		return nil, fmt.Errorf("%s: no trust anchor; write at least one DS or DNSKEY record", file)
	}
	return a, nil
}

// DefaultAnchors returns the built-in root anchors (RootAnchors).
func DefaultAnchors() *Anchors {
	a, err := ParseAnchors(RootAnchors, "built-in root anchors")
	if err != nil {
		panic("dnssec: built-in root anchors do not parse: " + err.Error())
	}
	return a
}

// closest returns the anchored zone that is name or its closest ancestor,
// or "" when no anchor covers name.
func (a *Anchors) closest(name string) string {
	for _, z := range ancestors(name) {
		if len(a.ds[z]) > 0 || len(a.keys[z]) > 0 {
			return z
		}
	}
	return ""
}

// Records returns the anchors in presentation format, one record a line,
// in no particular order.
func (a *Anchors) Records() []string {
	var out []string
	for _, ds := range a.ds {
		for _, d := range ds {
			out = append(out, d.String())
		}
	}
	for _, ks := range a.keys {
		for _, k := range ks {
			out = append(out, k.String())
		}
	}
	return out
}
