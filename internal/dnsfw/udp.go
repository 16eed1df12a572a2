package dnsfw

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

const (
	// maxUDPWorkers bounds the queries one UDP socket has in progress;
	// beyond it the reader waits for a worker, and the kernel's socket
	// buffer absorbs (then drops) the excess.
	maxUDPWorkers = 8192
	// udpWorkerIdle is how long a worker waits for another query before
	// it exits, so a burst's workers do not outlive it by much.
	udpWorkerIdle = 10 * time.Second
	// dnsHeaderSize is the fixed DNS header, all a datagram must hold to
	// be looked at.
	dnsHeaderSize = 12
)

// udpServer answers the queries on one UDP socket with long-lived workers,
// where dns.Server starts a goroutine per datagram. A fresh goroutine
// starts with a small stack, and unpacking a name and deciding grew (and
// copied) it twice per query: about a sixth of the CPU of a cached answer.
// A worker keeps its grown stack from one query to the next.
//
// Replies leave from the address the query came to, as dns.Server's do, so
// a firewall listening on a wildcard address of a multi-homed gateway
// answers from the right one: on a wildcard socket through IP_PKTINFO
// (dns.SessionUDP); a socket bound to one address needs none of that.
type udpServer struct {
	f        *Firewall
	conn     *net.UDPConn
	wildcard bool            // bound to 0.0.0.0 or ::; replies need the session
	local    netip.Addr      // the address bound, for fromInside
	ctx      context.Context // the handlers'; outlives Serve's by shutdownGrace
	work     chan udpPacket  // to an idle worker; closed when reading stops
	sem      chan struct{}   // a slot per worker
	wg       sync.WaitGroup  // the workers
	bufs     bufPool
	// The reader answers what the fast path can itself, with these: a
	// cached answer costs less to send than to hand to a worker.
	fq    fastQuery
	fastW udpReply
}

type udpPacket struct {
	buf  *[]byte
	n    int
	from netip.AddrPort
	sess *dns.SessionUDP // on a wildcard socket only
	// adm is the admission the fast path made, when handed is set.
	adm    admission
	handed bool
}

// serveUDPConn is ServeUDP for a *net.UDPConn.
func (f *Firewall) serveUDPConn(ctx context.Context, conn *net.UDPConn) error {
	wildcard := true
	if la, ok := conn.LocalAddr().(*net.UDPAddr); ok && la.IP != nil && !la.IP.IsUnspecified() && !f.udpSessions {
		wildcard = false
	}
	if wildcard {
		// As dns.Server does: ask for the destination address of each
		// datagram, for one family or the other.
		err6 := ipv6.NewPacketConn(conn).SetControlMessage(ipv6.FlagDst|ipv6.FlagInterface, true)
		err4 := ipv4.NewPacketConn(conn).SetControlMessage(ipv4.FlagDst|ipv4.FlagInterface, true)
		if err4 != nil && err6 != nil {
			conn.Close()
			return fmt.Errorf("dnsfw: serving DNS over udp: %w", err4)
		}
	}
	hctx, hcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer hcancel()
	s := &udpServer{f: f, conn: conn, wildcard: wildcard, ctx: hctx, work: make(chan udpPacket), sem: make(chan struct{}, maxUDPWorkers)}
	s.local = addrPortOf(conn.LocalAddr()).Addr()
	s.fastW.conn = conn
	// A read deadline in the past ends the read in progress.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()

	var err error
	if mc := s.batched(); mc != nil {
		err = s.readBatched(ctx, mc)
	} else {
		err = s.read(ctx)
	}
	close(s.work)
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	t := time.NewTimer(shutdownGrace)
	select {
	case <-done:
	case <-t.C:
		hcancel() // out of patience: end the exchanges still running
		<-done
	}
	t.Stop()
	conn.Close()
	if err != nil {
		return fmt.Errorf("dnsfw: serving DNS over udp: %w", err)
	}
	return nil
}

// read hands datagrams to workers until ctx is done (nil) or reading
// fails.
func (s *udpServer) read(ctx context.Context) error {
	for {
		bp := s.bufs.get()
		var (
			p   = udpPacket{buf: bp}
			err error
		)
		if s.wildcard {
			p.n, p.sess, err = dns.ReadFromSessionUDP(s.conn, *bp)
			if err == nil {
				p.from = udpAddrPort(p.sess.RemoteAddr())
			}
		} else {
			p.n, p.from, err = s.conn.ReadFromUDPAddrPort(*bp)
		}
		if err != nil {
			s.bufs.put(bp)
			if ctx.Err() != nil {
				return nil
			}
			if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
				continue // a deadline not ours; keep reading
			}
			return err
		}
		if p.n < dnsHeaderSize || !s.f.fromInside(p.from, s.local, false) {
			s.bufs.put(bp) // too short to answer, even with FORMERR; or from outside
			continue
		}
		s.fastW.to, s.fastW.sess = p.from, p.sess
		if !s.f.noFast && s.f.serveFast(s.ctx, &s.fq, (*bp)[:p.n], p.from, &s.fastW) {
			s.bufs.put(bp)
			continue
		}
		p.adm, p.handed = s.fq.take()
		p.handed = p.handed && !s.f.noFast
		s.dispatch(p, nil)
	}
}

// readBatched is read for a socket bound to one address, in batches: it
// answers what the fast path can and queues those replies, hands the rest
// to workers, and sends the queued replies once per batch.
//
// One goroutine reads a socket. A second one (there was one per CPU)
// waited on the socket's read lock while the first waited for data, and
// was woken on the other CPU for every datagram: with two, the p50 of a
// cached answer with one query in flight was 74-81 µs against 42-55 µs
// with one, at the same capacity within noise (BENCHMARKS.md, issue 17).
func (s *udpServer) readBatched(ctx context.Context, mc *mmsgConn) error {
	fq := &s.fq
	for {
		n, err := mc.recv()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
				continue // a deadline not ours; keep reading
			}
			return err
		}
		for i := range n {
			b, from, truncated := mc.datagram(i)
			if len(b) < dnsHeaderSize || !s.f.fromInside(from, s.local, false) {
				continue // too short to answer, even with FORMERR; or from outside
			}
			fq.admitted = false
			if !truncated && !s.f.noFast && s.f.serveFast(s.ctx, fq, b, from, mc.replyTo(i)) {
				continue
			}
			p := udpPacket{buf: mc.rbuf[i], n: len(b), from: from}
			p.adm, p.handed = fq.take()
			mc.setBuf(i, s.bufs.get())
			s.dispatch(p, mc)
		}
		if err := mc.flush(); err != nil {
			s.f.log.Debug("writing DNS replies", "error", err)
		}
	}
}

// dispatch hands p to a worker: an idle one, a new one, or at the bound
// the first one free. Replies queued in mc (if any) go out before it
// waits.
func (s *udpServer) dispatch(p udpPacket, mc *mmsgConn) {
	select {
	case s.work <- p: // an idle worker took it
		return
	default:
	}
	if mc != nil && mc.nw > 0 {
		if err := mc.flush(); err != nil {
			s.f.log.Debug("writing DNS replies", "error", err)
		}
	}
	select {
	case s.sem <- struct{}{}:
		s.wg.Add(1)
		go s.worker(p)
	case s.work <- p: // at the bound: the first worker free
	}
}

// batched returns the batch reader of a socket bound to one address, or
// nil: replies from a wildcard socket need each datagram's destination
// (IP_PKTINFO), which read handles through dns.SessionUDP.
func (s *udpServer) batched() *mmsgConn {
	if s.wildcard || s.f.noBatch {
		return nil
	}
	mc, err := newMmsgConn(s.conn, &s.bufs)
	if err != nil {
		return nil
	}
	return mc
}

func (s *udpServer) worker(p udpPacket) {
	defer s.wg.Done()
	defer func() { <-s.sem }()
	w := &udpReply{conn: s.conn}
	idle := time.NewTimer(udpWorkerIdle)
	defer idle.Stop()
	for {
		s.handle(p, w)
		// An idle worker holds nothing of its last query: its
		// admission's policy would outlive a reload by up to
		// udpWorkerIdle.
		p = udpPacket{}
		idle.Reset(udpWorkerIdle)
		select {
		case q, ok := <-s.work:
			if !ok {
				return
			}
			p = q
		case <-idle.C:
			return
		}
	}
}

// handle answers one datagram as dns.Server would: responses are ignored,
// what acceptQuery rejects or cannot be unpacked gets FORMERR (NOTIMP for
// other opcodes), the rest goes to the firewall.
func (s *udpServer) handle(p udpPacket, w *udpReply) {
	b := (*p.buf)[:p.n]
	w.to, w.sess = p.from, p.sess
	dh := dns.Header{
		Id:      binary.BigEndian.Uint16(b[0:]),
		Bits:    binary.BigEndian.Uint16(b[2:]),
		Qdcount: binary.BigEndian.Uint16(b[4:]),
		Ancount: binary.BigEndian.Uint16(b[6:]),
		Nscount: binary.BigEndian.Uint16(b[8:]),
		Arcount: binary.BigEndian.Uint16(b[10:]),
	}
	action := acceptQuery(dh)
	var req *dns.Msg
	if action == dns.MsgAccept {
		req = new(dns.Msg)
		if err := req.Unpack(b); err != nil {
			action = dns.MsgReject
		}
	}
	// Unpack copies what it keeps, as dns.Server relies on too.
	s.bufs.put(p.buf)
	switch action {
	case dns.MsgIgnore:
		return
	case dns.MsgReject, dns.MsgRejectNotImplemented:
		m := new(dns.Msg)
		m.Id = dh.Id
		m.Response = true
		m.RecursionDesired = dh.Bits&(1<<8) != 0
		m.CheckingDisabled = dh.Bits&(1<<4) != 0
		m.Rcode = dns.RcodeFormatError
		if action == dns.MsgRejectNotImplemented {
			m.Opcode = int(dh.Bits>>11) & 0xF
			m.Rcode = dns.RcodeNotImplemented
		}
		if b, err := m.Pack(); err == nil {
			_, _ = w.Write(b)
		}
		return
	}
	x := getExchange()
	x.start = s.f.now()
	x.src = p.from
	if p.handed {
		s.f.handovers.Add(1)
		x.adm, x.handed, x.start = p.adm, true, p.adm.at
	}
	s.f.serve(s.ctx, w, req, x)
	putExchange(x)
}

func udpAddrPort(a net.Addr) netip.AddrPort {
	if u, ok := a.(*net.UDPAddr); ok {
		return u.AddrPort()
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// udpReply sends a reply to the client of one query, from the address it
// asked.
type udpReply struct {
	conn *net.UDPConn
	to   netip.AddrPort
	sess *dns.SessionUDP // nil: the socket's one address
}

func (w *udpReply) Write(b []byte) (int, error) {
	if w.sess != nil {
		return dns.WriteToSessionUDP(w.conn, b, w.sess)
	}
	return w.conn.WriteToUDPAddrPort(b, w.to)
}
