// Command signedup is the signed upstream of bench/dnssec: a recursive
// resolver over the signed test hierarchy (internal/dnssec/dnssectest)
// plus a zone bench.example. of -names signed names, answering on -addr
// (UDP and TCP) with signatures and proofs, as a DNSSEC-passing upstream
// does, without validating (CD or not). Answers are iterated in memory
// once and then kept, so the upstream costs the servers under test little.
// It writes the hierarchy's trust anchor (a DS record) to -anchor.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/dnssec/dnssectest"
)

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	fs := flag.NewFlagSet("signedup", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:5400", "address to answer on, UDP and TCP")
	names := fs.Int("names", 200000, "names in bench.example.")
	anchor := fs.String("anchor", "", "file to write the trust anchor to")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	start := time.Now()
	h, err := dnssectest.BuildWithNames(time.Now(), *names)
	if err != nil {
		fmt.Fprintln(os.Stderr, "signedup:", err)
		return 1
	}
	if *anchor != "" {
		if err := os.WriteFile(*anchor, []byte(h.Anchor), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "signedup:", err)
			return 1
		}
	}
	fmt.Fprintf(os.Stderr, "signedup: %d names signed in %v\n", *names, time.Since(start).Round(time.Millisecond))
	s := &server{it: &dnssectest.Iterator{H: h, InMemory: true}}
	pc, err := net.ListenPacket("udp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "signedup:", err)
		return 1
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "signedup:", err)
		return 1
	}
	errc := make(chan error, 2)
	go func() { errc <- (&dns.Server{PacketConn: pc, Handler: s, UDPSize: 65535}).ActivateAndServe() }()
	go func() { errc <- (&dns.Server{Listener: ln, Handler: s}).ActivateAndServe() }()
	fmt.Fprintf(os.Stderr, "signedup: answering on %s\n", *addr)
	err = <-errc
	fmt.Fprintln(os.Stderr, "signedup:", err)
	return 1
}

type key struct {
	name  string
	qtype uint16
}

// server answers from memory: the iterator's full answer (RRSIGs and
// proofs) per question, kept once made.
type server struct {
	it    *dnssectest.Iterator
	cache sync.Map // key → *dns.Msg, never modified after it is stored
}

func (s *server) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	if len(r.Question) != 1 {
		m := new(dns.Msg)
		m.SetRcode(r, dns.RcodeFormatError)
		_ = w.WriteMsg(m)
		return
	}
	q := r.Question[0]
	k := key{strings.ToLower(q.Name), q.Qtype}
	var full *dns.Msg
	if v, ok := s.cache.Load(k); ok {
		full = v.(*dns.Msg)
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		resp, err := s.it.Exchange(ctx, &dns.Msg{Question: []dns.Question{{Name: k.name, Qtype: q.Qtype, Qclass: dns.ClassINET}}})
		cancel()
		if err != nil {
			m := new(dns.Msg)
			m.SetRcode(r, dns.RcodeServerFailure)
			_ = w.WriteMsg(m)
			return
		}
		full = resp
		s.cache.Store(k, full)
	}
	m := new(dns.Msg)
	m.SetReply(r)
	m.RecursionAvailable = true
	m.CheckingDisabled = r.CheckingDisabled
	m.Rcode = full.Rcode
	do := false
	if o := r.IsEdns0(); o != nil {
		do = o.Do()
	}
	m.Answer, m.Ns = full.Answer, full.Ns
	if !do {
		m.Answer, m.Ns = dnssectest.WithoutDNSSEC(m.Answer), dnssectest.WithoutDNSSEC(m.Ns)
	}
	if o := r.IsEdns0(); o != nil {
		m.SetEdns0(4096, do)
	}
	if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
		size := dns.MinMsgSize
		if o := r.IsEdns0(); o != nil {
			size = max(size, int(o.UDPSize()))
		}
		m.Truncate(size)
	}
	_ = w.WriteMsg(m)
}
