// Command upstream is a small, fast authoritative DNS server for
// benchmarks: it answers A and AAAA for every name under bench.example.
// with a documentation address derived from a hash of the name (TTL 300),
// NODATA for other types there, and NXDOMAIN for names outside the zone.
//
// It is the "fast local upstream" the DNS firewall benchmark forwards to,
// so it must not be the bottleneck: it opens one SO_REUSEPORT UDP socket
// per reader (the kernel spreads clients over them by 4-tuple hash), each
// served by one goroutine that reuses its buffers, so the hot path does not
// allocate per query beyond what miekg/dns unpacking needs.
//
// For the scale benchmark (bench/scale) it can answer with several
// addresses (-a, -aaaa), A addresses from the benchmarking range
// 198.18.0.0/15 (-bench4: 131,072 of them, where the documentation ranges
// hold 762), and a short TTL for the names that start with a prefix
// (-short, -short-ttl), whose addresses then expire together.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

const (
	zone = "bench.example."
	ttl  = 300
)

// What answers hold; set from flags once, before serving.
var (
	nA, nAAAA   = 1, 1
	bench4      bool
	shortPrefix string
	shortTTL    uint32
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	fs := flag.NewFlagSet("upstream", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:5300", "UDP and TCP address to serve on (loopback only)")
	readers := fs.Int("readers", runtime.GOMAXPROCS(0), "UDP sockets (SO_REUSEPORT), one goroutine each")
	fs.IntVar(&nA, "a", 1, "A records in an answer (1-64)")
	fs.IntVar(&nAAAA, "aaaa", 1, "AAAA records in an answer (1-64)")
	fs.BoolVar(&bench4, "bench4", false, "A addresses from 198.18.0.0/15 instead of 198.51.100.0/24")
	fs.StringVar(&shortPrefix, "short", "", "names starting with this label prefix get -short-ttl")
	short := fs.Uint("short-ttl", 30, "TTL in seconds of the names -short matches")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if nA < 1 || nA > 64 || nAAAA < 1 || nAAAA > 64 {
		fmt.Fprintln(os.Stderr, "upstream: -a and -aaaa must be 1 to 64")
		return 2
	}
	shortTTL = uint32(*short)
	ap, err := netip.ParseAddrPort(*addr)
	if err != nil || !ap.Addr().IsLoopback() {
		fmt.Fprintf(os.Stderr, "upstream: -addr %q must be a loopback host:port\n", *addr)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	lc := net.ListenConfig{Control: reusePort}
	errc := make(chan error, *readers+1)
	for range *readers {
		pc, err := lc.ListenPacket(ctx, "udp", *addr)
		if err != nil {
			fmt.Fprintf(os.Stderr, "upstream: listening on %s/udp: %v\n", *addr, err)
			return 1
		}
		defer pc.Close()
		go func() { errc <- serveUDP(pc.(*net.UDPConn)) }()
	}
	l, err := lc.Listen(ctx, "tcp", *addr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "upstream: listening on %s/tcp: %v\n", *addr, err)
		return 1
	}
	srv := &dns.Server{Listener: l, Net: "tcp", Handler: dns.HandlerFunc(serveTCP)}
	go func() { errc <- srv.ActivateAndServe() }()
	fmt.Fprintf(os.Stderr, "upstream: serving %s on %s (%d UDP sockets)\n", zone, *addr, *readers)

	select {
	case <-ctx.Done():
		_ = srv.Shutdown()
		return 0
	case err := <-errc:
		fmt.Fprintf(os.Stderr, "upstream: %v\n", err)
		return 1
	}
}

func reusePort(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	})
	return errors.Join(err, serr)
}

// serveUDP answers queries on pc until it is closed. Malformed packets are
// dropped, as an authoritative server under load would.
func serveUDP(pc *net.UDPConn) error {
	in := make([]byte, 4096)
	out := make([]byte, 0, 4096)
	var req, resp dns.Msg
	for {
		n, from, err := pc.ReadFromUDPAddrPort(in)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("reading UDP: %w", err)
		}
		if err := req.Unpack(in[:n]); err != nil || req.Response || len(req.Question) != 1 {
			continue
		}
		answer(&req, &resp)
		b, err := resp.PackBuffer(out)
		if err != nil {
			continue
		}
		_, _ = pc.WriteToUDPAddrPort(b, from)
	}
}

func serveTCP(w dns.ResponseWriter, req *dns.Msg) {
	if len(req.Question) != 1 {
		return
	}
	var resp dns.Msg
	answer(req, &resp)
	_ = w.WriteMsg(&resp)
}

// answer fills resp with the authoritative reply to req, reusing resp's
// slices.
func answer(req, resp *dns.Msg) {
	q := req.Question[0]
	resp.MsgHdr = dns.MsgHdr{
		Id: req.Id, Response: true, Opcode: req.Opcode, Authoritative: true,
		RecursionDesired: req.RecursionDesired,
	}
	resp.Compress = false
	resp.Question = append(resp.Question[:0], q)
	resp.Answer = resp.Answer[:0]
	resp.Ns = resp.Ns[:0]
	resp.Extra = resp.Extra[:0]
	if opt := req.IsEdns0(); opt != nil {
		resp.SetEdns0(min(opt.UDPSize(), 1232), false)
	}
	name := strings.ToLower(q.Name)
	inZone := name == zone || strings.HasSuffix(name, "."+zone)
	hdr := dns.RR_Header{Name: q.Name, Class: dns.ClassINET, Ttl: ttl}
	if shortPrefix != "" && strings.HasPrefix(name, shortPrefix) {
		hdr.Ttl = shortTTL
	}
	switch {
	case !inZone || q.Qclass != dns.ClassINET:
		resp.Rcode = dns.RcodeNameError
		resp.Ns = append(resp.Ns, soa())
	case q.Qtype == dns.TypeA:
		hdr.Rrtype = dns.TypeA
		h := hash(name)
		for i := range uint32(nA) {
			a := net.IPv4(198, 51, 100, byte(1+(h+i)%254))
			if bench4 {
				x := (h + i) % (1 << 17)
				a = net.IPv4(198, 18+byte(x>>16), byte(x>>8), byte(x))
			}
			resp.Answer = append(resp.Answer, &dns.A{Hdr: hdr, A: a})
		}
	case q.Qtype == dns.TypeAAAA:
		hdr.Rrtype = dns.TypeAAAA
		h := hash(name)
		for i := range nAAAA {
			ip := net.IP{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, byte(i), byte(h >> 24), byte(h >> 16), byte(h >> 8), byte(h)}
			resp.Answer = append(resp.Answer, &dns.AAAA{Hdr: hdr, AAAA: ip})
		}
	default:
		resp.Ns = append(resp.Ns, soa())
	}
}

func soa() dns.RR {
	return &dns.SOA{
		Hdr: dns.RR_Header{Name: zone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: ttl},
		Ns:  "ns." + zone, Mbox: "hostmaster." + zone,
		Serial: 1, Refresh: 3600, Retry: 600, Expire: 86400, Minttl: ttl,
	}
}

// hash is 32-bit FNV-1a, written out so the hot path does not allocate.
func hash(name string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(name); i++ {
		h ^= uint32(name[i])
		h *= 16777619
	}
	return h
}
