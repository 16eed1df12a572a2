package nft

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// The monitor is a netlink socket subscribed to nf_tables' notifications
// (NFNLGRP_NFTABLES): the kernel sends one message per table, chain,
// rule, set or element that a transaction adds or deletes, then a
// NEWGEN message naming the process that committed it. Each message
// carries the netlink port of the socket that sent the transaction, so
// the backend tells its own changes from everyone else's. It reads the
// few header fields and attributes it needs in place, rather than
// through nftables.Monitor, which decodes every rule and element of
// every table into allocations and stops at the first socket error.

// monitorRcvBuf is the monitor's receive buffer. A burst that overflows
// it (ENOBUFS) is not lost silently: the backend checks the whole table
// instead.
const monitorRcvBuf = 4 << 20

// monitorMaxMsg bounds a datagram: notifications come in skbs of at most
// a page or two.
const monitorMaxMsg = 64 << 10

// Attributes the x/sys/unix package does not name (linux/netfilter/nf_tables.h).
const (
	nftaTableHandle = 4
	nftaSetHandle   = 16
	nftaGenProcPID  = 2
	nftaGenProcName = 3
)

type monitor struct {
	c   *netlink.Conn
	raw syscall.RawConn
	buf []byte
}

// openMonitor subscribes to nf_tables' notifications in the namespace
// netnsFd (0: the current one). A socket filter drops, in the kernel,
// the notifications of the backend's own transactions: all of elems's
// (its element updates, a transaction per published answer, would
// otherwise all reach the monitor) and all of conn's but their NEWGEN
// messages, which mark in the stream where each of its commits falls.
func openMonitor(netnsFd int, conn, elems uint32) (*monitor, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: netnsFd})
	if err != nil {
		return nil, netlinkErr("opening the nftables monitor", err)
	}
	filter, err := ownFilter(conn, elems)
	if err == nil {
		err = c.SetBPF(filter)
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("nftables: filtering the monitor: %w", err)
	}
	raw, err := c.SyscallConn()
	if err != nil {
		c.Close()
		return nil, netlinkErr("opening the nftables monitor", err)
	}
	setBuffer(raw, unix.SO_RCVBUFFORCE, unix.SO_RCVBUF, monitorRcvBuf)
	if err := c.JoinGroup(unix.NFNLGRP_NFTABLES); err != nil {
		c.Close()
		return nil, netlinkErr("subscribing to nftables changes", err)
	}
	return &monitor{c: c, raw: raw, buf: make([]byte, monitorMaxMsg)}, nil
}

// ownFilter is the monitor's socket filter. It looks at a datagram's
// first message only: the kernel batches the notifications of one
// transaction, and only of one, into a datagram, and sends the
// transaction's NEWGEN in a datagram of its own.
func ownFilter(conn, elems uint32) ([]bpf.RawInstruction, error) {
	// A classic BPF load reads big-endian; the netlink header is in host
	// order.
	be32 := func(v uint32) uint32 { return binary.BigEndian.Uint32(binary.NativeEndian.AppendUint32(nil, v)) }
	be16 := func(v uint16) uint32 {
		return uint32(binary.BigEndian.Uint16(binary.NativeEndian.AppendUint16(nil, v)))
	}
	return bpf.Assemble([]bpf.Instruction{
		bpf.LoadAbsolute{Off: 12, Size: 4}, // nlmsg_pid
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: be32(elems), SkipTrue: 4},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: be32(conn), SkipFalse: 2},
		bpf.LoadAbsolute{Off: 4, Size: 2}, // nlmsg_type
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: be16(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWGEN), SkipFalse: 1},
		bpf.RetConstant{Val: 0xffffffff},
		bpf.RetConstant{Val: 0},
	})
}

// setBuffer sets a socket buffer size, beyond the system's maximum if
// the process may (CAP_NET_ADMIN, which the backend has anyway). A
// smaller buffer only costs a retry or a full check, so failures are
// ignored.
func setBuffer(raw syscall.RawConn, force, plain, size int) {
	_ = raw.Control(func(fd uintptr) {
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, force, size) != nil {
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, plain, size)
		}
	})
}

// netlinkPort returns the netlink port id the kernel gave a socket.
func netlinkPort(c *netlink.Conn) (uint32, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var (
		sa   unix.Sockaddr
		serr error
	)
	if err := raw.Control(func(fd uintptr) { sa, serr = unix.Getsockname(int(fd)) }); err != nil {
		return 0, err
	}
	if serr != nil {
		return 0, serr
	}
	nl, ok := sa.(*unix.SockaddrNetlink)
	if !ok {
		return 0, errors.New("not a netlink socket")
	}
	return nl.Pid, nil
}

// errOverrun: notifications were lost (the socket's buffer overflowed,
// or a datagram did not fit), so the backend must check the table as a
// whole.
var errOverrun = errors.New("nftables notifications were lost")

// read returns the next datagram, waiting for one if wait is set; without
// wait, it returns nil when none is queued. It returns errOverrun when
// notifications were lost.
func (m *monitor) read(wait bool, deadline time.Time) ([]byte, error) {
	if err := m.c.SetReadDeadline(deadline); err != nil {
		return nil, err
	}
	var (
		n    int
		rerr error
	)
	err := m.raw.Read(func(fd uintptr) bool {
		n, _, rerr = unix.Recvfrom(int(fd), m.buf, unix.MSG_DONTWAIT|unix.MSG_TRUNC)
		return !wait || rerr != unix.EAGAIN
	})
	if err == nil {
		err = rerr
	}
	switch {
	case err == unix.EAGAIN:
		return nil, nil
	case err == unix.ENOBUFS:
		return nil, errOverrun
	case err != nil:
		return nil, err
	case n > len(m.buf):
		return nil, errOverrun
	}
	return m.buf[:n], nil
}

func (m *monitor) Close() error { return m.c.Close() }

// change is one notification about the backend's table from another
// socket.
type change struct {
	port uint32
	what string
}

// proc is a transaction's committer, from its NEWGEN message.
type proc struct {
	port uint32
	pid  uint32
	comm string
}

// parseNotifications walks the messages of one datagram and returns the
// changes to table (family inet) sent by sockets other than ours, and the
// committers of transactions (ours included). The kernel's own deletion
// of expired elements (port 0) is not a change.
func parseNotifications(b []byte, table string, ours []uint32) (changes []change, procs []proc) {
	for len(b) >= unix.NLMSG_HDRLEN {
		l := int(binary.NativeEndian.Uint32(b))
		if l < unix.NLMSG_HDRLEN || l > len(b) {
			return changes, procs
		}
		typ := binary.NativeEndian.Uint16(b[4:])
		port := binary.NativeEndian.Uint32(b[12:])
		msg := b[unix.NLMSG_HDRLEN:l]
		b = b[min(len(b), (l+3)&^3):]
		if typ>>8 != unix.NFNL_SUBSYS_NFTABLES || len(msg) < 4 {
			continue
		}
		family, attrs := msg[0], msg[4:]
		kind := typ & 0xff
		if kind == unix.NFT_MSG_NEWGEN {
			p := proc{port: port}
			forAttrs(attrs, func(typ uint16, v []byte) {
				switch {
				case typ == nftaGenProcPID && len(v) == 4:
					p.pid = binary.BigEndian.Uint32(v)
				case typ == nftaGenProcName:
					p.comm = strings.TrimRight(string(v), "\x00")
				}
			})
			procs = append(procs, p)
			continue
		}
		if isOurs(port, ours) {
			continue
		}
		if family != unix.NFPROTO_INET || attrString(attrs, 1) != table {
			continue // every object's table is attribute 1
		}
		if kind == unix.NFT_MSG_DELSETELEM && port == 0 {
			continue
		}
		if what := describeChange(kind, attrs); what != "" {
			changes = append(changes, change{port, what})
		}
	}
	return changes, procs
}

func isOurs(port uint32, ours []uint32) bool {
	for _, p := range ours {
		if port == p && p != 0 {
			return true
		}
	}
	return false
}

// describeChange says what a notification did, in the words of the
// warning the restore logs; "" for messages that change nothing.
func describeChange(kind uint16, attrs []byte) string {
	switch kind {
	case unix.NFT_MSG_NEWTABLE:
		return "table added or its flags changed"
	case unix.NFT_MSG_DELTABLE:
		return "table deleted"
	case unix.NFT_MSG_NEWCHAIN:
		return "chain " + attrString(attrs, unix.NFTA_CHAIN_NAME) + " added or changed"
	case unix.NFT_MSG_DELCHAIN:
		return "chain " + attrString(attrs, unix.NFTA_CHAIN_NAME) + " deleted"
	case unix.NFT_MSG_NEWRULE:
		return "rule added to chain " + attrString(attrs, unix.NFTA_RULE_CHAIN)
	case unix.NFT_MSG_DELRULE:
		return "rule deleted from chain " + attrString(attrs, unix.NFTA_RULE_CHAIN)
	case unix.NFT_MSG_NEWSET:
		return "set " + attrString(attrs, unix.NFTA_SET_NAME) + " added"
	case unix.NFT_MSG_DELSET:
		return "set " + attrString(attrs, unix.NFTA_SET_NAME) + " deleted"
	case unix.NFT_MSG_NEWSETELEM:
		return "element added to set " + attrString(attrs, unix.NFTA_SET_ELEM_LIST_SET)
	case unix.NFT_MSG_DELSETELEM:
		return "element deleted from set " + attrString(attrs, unix.NFTA_SET_ELEM_LIST_SET)
	case unix.NFT_MSG_NEWOBJ, unix.NFT_MSG_NEWFLOWTABLE:
		return "object added"
	case unix.NFT_MSG_DELOBJ, unix.NFT_MSG_DELFLOWTABLE:
		return "object deleted"
	}
	return ""
}

// forAttrs calls f for each top-level attribute of b.
func forAttrs(b []byte, f func(typ uint16, v []byte)) {
	for len(b) >= 4 {
		l := int(binary.NativeEndian.Uint16(b))
		if l < 4 || l > len(b) {
			return
		}
		f(binary.NativeEndian.Uint16(b[2:])&^(unix.NLA_F_NESTED|unix.NLA_F_NET_BYTEORDER), b[4:l])
		b = b[min(len(b), (l+3)&^3):]
	}
}

// attrString returns the string attribute typ of b, or "".
func attrString(b []byte, typ uint16) string {
	var s string
	forAttrs(b, func(t uint16, v []byte) {
		if t == typ {
			s = strings.TrimRight(string(v), "\x00")
		}
	})
	return s
}
