package dnsfw

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// udpBatch is how many datagrams one recvmmsg reads and one sendmmsg
// sends at most. Under load the socket holds many queries at once; a batch
// costs one system call and one trip through the runtime's poller instead
// of one per datagram.
const udpBatch = 32

// mmsgConn reads and writes datagrams of a UDP socket in batches. It is
// used by the socket's one reader goroutine only.
type mmsgConn struct {
	rc syscall.RawConn

	rhdr  [udpBatch]unix.Mmsghdr
	riov  [udpBatch]unix.Iovec
	rname [udpBatch]unix.RawSockaddrInet6 // large enough for either family
	rbuf  [udpBatch]*[]byte
	n     int // datagrams read into rbuf by the last recv

	whdr  [udpBatch]unix.Mmsghdr
	wiov  [udpBatch]unix.Iovec
	wname [udpBatch]unix.RawSockaddrInet6
	wbuf  [udpBatch][maxUDPReply]byte
	nw    int // replies queued

	// The callbacks for RawConn, made once so a batch allocates nothing,
	// and what they take and return.
	recvFn, sendFn func(fd uintptr) bool
	from, sent     int
	errno          syscall.Errno
}

func newMmsgConn(conn *net.UDPConn, bufs *bufPool) (*mmsgConn, error) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return nil, err
	}
	m := &mmsgConn{rc: rc}
	for i := range m.rbuf {
		m.setBuf(i, bufs.get())
	}
	m.recvFn = m.recvmmsg
	m.sendFn = m.sendmmsg
	return m, nil
}

func (m *mmsgConn) setBuf(i int, bp *[]byte) {
	m.rbuf[i] = bp
	m.riov[i].Base = &(*bp)[0]
	m.riov[i].SetLen(len(*bp))
}

// recv reads at least one datagram, waiting for one; it returns how many
// it read into rbuf.
func (m *mmsgConn) recv() (int, error) {
	for i := range m.rhdr {
		h := &m.rhdr[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&m.rname[i]))
		h.Namelen = uint32(unsafe.Sizeof(m.rname[i]))
		h.Iov = &m.riov[i]
		h.SetIovlen(1)
		h.Control, h.Controllen, h.Flags = nil, 0, 0
		m.rhdr[i].Len = 0
	}
	m.n, m.errno = 0, 0
	if err := m.rc.Read(m.recvFn); err != nil {
		return 0, err
	}
	if m.errno != 0 {
		return 0, &net.OpError{Op: "recvmmsg", Net: "udp", Err: m.errno}
	}
	return m.n, nil
}

func (m *mmsgConn) recvmmsg(fd uintptr) bool {
	n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&m.rhdr[0])), udpBatch, unix.MSG_DONTWAIT, 0, 0)
	for errno == unix.EINTR {
		n, _, errno = unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&m.rhdr[0])), udpBatch, unix.MSG_DONTWAIT, 0, 0)
	}
	switch {
	case errno == unix.EAGAIN:
		return false // wait until readable
	case errno != 0:
		m.errno = errno
	default:
		m.n = int(n)
	}
	return true
}

// datagram returns the i-th datagram read, its sender, and whether it was
// cut short (larger than the buffer).
func (m *mmsgConn) datagram(i int) (b []byte, from netip.AddrPort, truncated bool) {
	n := int(m.rhdr[i].Len)
	return (*m.rbuf[i])[:n], sockaddrAddrPort(&m.rname[i]), m.rhdr[i].Hdr.Flags&unix.MSG_TRUNC != 0
}

func sockaddrAddrPort(sa *unix.RawSockaddrInet6) netip.AddrPort {
	port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), port)
	case unix.AF_INET6:
		// As net.UDPConn reports them: a mapped address stays mapped.
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), port)
	}
	return netip.AddrPort{}
}

// replyTo returns a writer that queues a reply to the sender of the i-th
// datagram read; flush sends the queue.
func (m *mmsgConn) replyTo(i int) batchReply {
	return batchReply{m: m, name: &m.rname[i], namelen: m.rhdr[i].Hdr.Namelen}
}

// batchReply queues one reply in its mmsgConn.
type batchReply struct {
	m       *mmsgConn
	name    *unix.RawSockaddrInet6
	namelen uint32
}

func (w batchReply) Write(b []byte) (int, error) {
	m := w.m
	if len(b) > maxUDPReply {
		return 0, errors.New("dnsfw: reply larger than the UDP limit")
	}
	if m.nw == udpBatch {
		if err := m.flush(); err != nil {
			return 0, err
		}
	}
	i := m.nw
	n := copy(m.wbuf[i][:], b)
	m.wname[i] = *w.name
	m.wiov[i].Base = &m.wbuf[i][0]
	m.wiov[i].SetLen(n)
	h := &m.whdr[i].Hdr
	h.Name = (*byte)(unsafe.Pointer(&m.wname[i]))
	h.Namelen = w.namelen
	h.Iov = &m.wiov[i]
	h.SetIovlen(1)
	h.Control, h.Controllen, h.Flags = nil, 0, 0
	m.nw++
	return n, nil
}

// flush sends the queued replies. A reply the kernel refuses is dropped,
// as a failed sendto's is, and the rest still go.
func (m *mmsgConn) flush() error {
	var firstErr error
	done := 0
	for done < m.nw {
		m.from, m.sent, m.errno = done, 0, 0
		if err := m.rc.Write(m.sendFn); err != nil {
			m.nw = 0
			return err
		}
		if m.errno != 0 {
			if firstErr == nil {
				firstErr = &net.OpError{Op: "sendmmsg", Net: "udp", Err: m.errno}
			}
			done++ // skip the datagram that failed
			continue
		}
		done += m.sent
	}
	m.nw = 0
	return firstErr
}

// sendmmsg sends the queued replies from m.from on: flush's callback.
func (m *mmsgConn) sendmmsg(fd uintptr) bool {
	send := func() (uintptr, syscall.Errno) {
		n, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&m.whdr[m.from])), uintptr(m.nw-m.from), unix.MSG_DONTWAIT, 0, 0)
		return n, errno
	}
	n, errno := send()
	for errno == unix.EINTR {
		n, errno = send()
	}
	switch {
	case errno == unix.EAGAIN:
		return false // wait until writable
	case errno != 0:
		m.errno = errno
	default:
		m.sent = int(n)
	}
	return true
}
