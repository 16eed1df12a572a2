package dnsfw

import (
	"errors"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func TestDecisionMatrix(t *testing.T) {
	e := newEnv(t, zone(), opts{})
	tests := []struct {
		name      string
		src       string
		qname     string
		qtype     uint16
		wantRcode int
		wantAddrs []string
		upstream  bool // whether the query may reach the upstream
	}{
		{"rule's group, exact name, A", payments, "api.bank.example", dns.TypeA, dns.RcodeSuccess, []string{"192.0.2.10"}, true},
		{"rule's group, exact name, AAAA", payments, "api.bank.example", dns.TypeAAAA, dns.RcodeSuccess, []string{"2001:db8::10"}, true},
		{"rule's group, one-label wildcard", payments, "x.edge.bank.example", dns.TypeA, dns.RcodeSuccess, []string{"192.0.2.11"}, true},
		{"wildcard covers one label only", payments, "a.b.edge.bank.example", dns.TypeA, dns.RcodeNameError, nil, false},
		{"wildcard does not cover its base", payments, "edge.bank.example", dns.TypeA, dns.RcodeNameError, nil, false},
		{"other group", web, "api.bank.example", dns.TypeA, dns.RcodeNameError, nil, false},
		{"no group", stranger, "api.bank.example", dns.TypeA, dns.RcodeNameError, nil, false},
		{"other group's own rule", web, "www.example.com", dns.TypeA, dns.RcodeSuccess, []string{"192.0.2.20"}, true},
		{"rule without from, group", payments, "public.example", dns.TypeA, dns.RcodeSuccess, []string{"192.0.2.30"}, true},
		{"rule without from, no group", stranger, "public.example", dns.TypeA, dns.RcodeSuccess, []string{"192.0.2.30"}, true},
		{"unlisted name", payments, "evil.example", dns.TypeA, dns.RcodeNameError, nil, false},
		{"allowed name, TXT", payments, "api.bank.example", dns.TypeTXT, dns.RcodeRefused, nil, false},
		{"allowed name, MX", payments, "api.bank.example", dns.TypeMX, dns.RcodeRefused, nil, false},
		{"allowed name, ANY", payments, "api.bank.example", dns.TypeANY, dns.RcodeRefused, nil, false},
		{"allowed name, NULL", payments, "api.bank.example", dns.TypeNULL, dns.RcodeRefused, nil, false},
		{"denied name, TXT", web, "api.bank.example", dns.TypeTXT, dns.RcodeNameError, nil, false},
		{"root", payments, ".", dns.TypeA, dns.RcodeNameError, nil, false},
		{"escaped dot in a label", payments, `api\.bank.example`, dns.TypeA, dns.RcodeNameError, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e.up.Reset()
			r := e.ask(tt.src, tt.qname, tt.qtype)
			if r.Rcode != tt.wantRcode {
				t.Errorf("rcode: got %s, want %s", dns.RcodeToString[r.Rcode], dns.RcodeToString[tt.wantRcode])
			}
			if got := answerAddrs(r); !slices.Equal(got, tt.wantAddrs) {
				t.Errorf("answer: got %v, want %v", got, tt.wantAddrs)
			}
			if got := e.up.QueryCount() > 0; got && !tt.upstream {
				t.Errorf("upstream saw %d queries, want none", e.up.QueryCount())
			}
		})
	}
}

func TestDenyWith(t *testing.T) {
	tests := []struct {
		denyWith string
		want     int // rcode; -1: no reply
	}{
		{"nxdomain", dns.RcodeNameError},
		{"refused", dns.RcodeRefused},
		{"drop", -1},
	}
	for _, tt := range tests {
		t.Run(tt.denyWith, func(t *testing.T) {
			e := newEnv(t, zone(), opts{dns: "  deny_with: " + tt.denyWith})
			m := new(dns.Msg).SetQuestion("evil.example.", dns.TypeA)
			for _, network := range []string{"udp", "tcp"} {
				r, err := e.exchange(payments, network, m, 300*time.Millisecond)
				switch {
				case tt.want < 0:
					var ne net.Error
					if err == nil || !errors.As(err, &ne) || !ne.Timeout() {
						t.Errorf("%s: got reply %v, error %v; want a timeout", network, r, err)
					}
				case err != nil:
					t.Errorf("%s: %v", network, err)
				case r.Rcode != tt.want:
					t.Errorf("%s: rcode: got %s, want %s", network, dns.RcodeToString[r.Rcode], dns.RcodeToString[tt.want])
				}
			}
			if n := e.up.QueryCount(); n != 0 {
				t.Errorf("upstream saw %d queries, want 0", n)
			}
			lines := e.auditLines(2)
			if len(lines) != 2 {
				t.Fatalf("audit lines: got %d, want 2", len(lines))
			}
			if got := lines[0]["action"]; got != "deny" {
				t.Errorf("audit action: got %v, want deny", got)
			}
		})
	}
}

func TestMalformedQueries(t *testing.T) {
	e := newEnv(t, zone(), opts{})
	q := func(mod func(m *dns.Msg)) *dns.Msg {
		m := new(dns.Msg).SetQuestion("api.bank.example.", dns.TypeA)
		mod(m)
		return m
	}
	tests := []struct {
		name string
		msg  *dns.Msg
		want int // rcode; -1: no reply
	}{
		{"class CH", q(func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassCHAOS }), dns.RcodeRefused},
		{"class ANY", q(func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassANY }), dns.RcodeRefused},
		{"opcode NOTIFY", q(func(m *dns.Msg) { m.Opcode = dns.OpcodeNotify }), dns.RcodeNotImplemented},
		{"opcode UPDATE", q(func(m *dns.Msg) { m.Opcode = dns.OpcodeUpdate }), dns.RcodeNotImplemented},
		{"opcode STATUS", q(func(m *dns.Msg) { m.Opcode = dns.OpcodeStatus }), dns.RcodeNotImplemented},
		{"two questions", q(func(m *dns.Msg) { m.Question = append(m.Question, m.Question[0]) }), dns.RcodeFormatError},
		{"no question", q(func(m *dns.Msg) { m.Question = nil }), dns.RcodeFormatError},
		{"answer section", q(func(m *dns.Msg) {
			m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeA, Class: dns.ClassINET}, A: net.IPv4(1, 2, 3, 4)}}
		}), dns.RcodeFormatError},
		{"EDNS version 1", q(func(m *dns.Msg) { m.SetEdns0(1232, false); m.IsEdns0().SetVersion(1) }), dns.RcodeBadVers},
		{"two OPT records", q(func(m *dns.Msg) { m.SetEdns0(1232, false); m.SetEdns0(1232, false) }), dns.RcodeFormatError},
		{"a response", q(func(m *dns.Msg) { m.Response = true }), -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e.up.Reset()
			r, err := e.exchange(payments, "udp", tt.msg, 300*time.Millisecond)
			switch {
			case tt.want < 0:
				if err == nil {
					t.Errorf("got reply %s, want none", dns.RcodeToString[r.Rcode])
				}
			case err != nil:
				t.Errorf("got error %v, want rcode %s", err, dns.RcodeToString[tt.want])
			case r.Rcode != tt.want:
				t.Errorf("rcode: got %s, want %s", dns.RcodeToString[r.Rcode], dns.RcodeToString[tt.want])
			}
			if n := e.up.QueryCount(); n != 0 {
				t.Errorf("upstream saw %d queries, want 0", n)
			}
		})
	}
}
