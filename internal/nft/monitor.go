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
// netnsFd (0: the current one). A socket filter (monitorFilter) drops,
// in the kernel, the notifications of the backend's own transactions and
// those about other tables than table.
func openMonitor(netnsFd int, conn, elems uint32, table string) (*monitor, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: netnsFd})
	if err != nil {
		return nil, netlinkErr("opening the nftables monitor", err)
	}
	filter, err := monitorFilter(conn, elems, table)
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

// The monitor's socket filter. The kernel sends the notifications of one
// transaction, and only of one, in a datagram (several, if large), and
// the transaction's NEWGEN in a datagram of its own; every message
// carries the port of the socket that sent the transaction.
//
//   - A datagram from elems (element updates, a transaction per published
//     answer) is dropped whole, and one from conn but for its NEWGEN
//     messages, which mark in the stream where each of its commits falls.
//     These look at the first message only.
//   - A datagram from any other socket is dropped when every message in
//     it is about another table. Those are most of what a busy host sends
//     (kube-proxy's or a container runtime's sets, other gateways' tables
//     in one namespace), and reading them costs the watcher a wake-up and
//     a parse each.
//
// Anything the filter cannot vouch for is kept, for parseNotifications
// to judge: a NEWGEN, a message whose first attribute is not a table
// name (attribute 1 of every object nf_tables notifies about), a message
// too short or too long for the filter's arithmetic, and messages past
// the first filterMsgs of a datagram. The filter never needs to be right
// about what to keep, only about what to drop.
const filterMsgs = 64

// Offsets in a notification: the netlink header (16 bytes), nfgenmsg (4),
// then the first attribute's length, type and value.
const (
	offMsgLen   = 0
	offMsgType  = 4
	offMsgPort  = 12
	offAttrLen  = unix.NLMSG_HDRLEN + 4
	offAttrType = offAttrLen + 2
	offAttrVal  = offAttrLen + 4
)

func monitorFilter(conn, elems uint32, table string) ([]bpf.RawInstruction, error) {
	// Classic BPF loads read big-endian; netlink headers and attribute
	// headers are in host order.
	be32 := func(v uint32) uint32 { return binary.BigEndian.Uint32(binary.NativeEndian.AppendUint32(nil, v)) }
	be16 := func(v uint16) uint32 {
		return uint32(binary.BigEndian.Uint16(binary.NativeEndian.AppendUint16(nil, v)))
	}
	const (
		keep = 0xffffffff
		drop = 0
	)
	newgen := be16(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWGEN)
	// The table attribute's value as the kernel writes it: the name and a
	// NUL (then padding to four bytes, which the comparison masks off).
	name := []byte(table + "\x00")
	padded := (len(name) + 3) &^ 3
	ins := []bpf.Instruction{
		bpf.LoadAbsolute{Off: offMsgPort, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: be32(elems), SkipTrue: 1},
		bpf.RetConstant{Val: drop},
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: be32(conn), SkipTrue: 4},
		bpf.LoadAbsolute{Off: offMsgType, Size: 2},
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: newgen, SkipTrue: 1},
		bpf.RetConstant{Val: keep},
		bpf.RetConstant{Val: drop},
		bpf.LoadConstant{Dst: bpf.RegX, Val: 0}, // X: the offset of the message looked at
	}
	// One message: the instructions from its start to next, where X
	// moves to the message after it.
	msg := func() []bpf.Instruction {
		var m []bpf.Instruction
		// Past the last message: every one was about another table.
		m = append(m,
			bpf.LoadExtension{Num: bpf.ExtLen},
			bpf.JumpIfX{Cond: bpf.JumpGreaterThan, SkipTrue: 1},
			bpf.RetConstant{Val: drop},
			// Too short to hold the name compared below: keep.
			bpf.ALUOpX{Op: bpf.ALUOpSub},
			bpf.JumpIf{Cond: bpf.JumpGreaterOrEqual, Val: uint32(offAttrVal + padded), SkipTrue: 1},
			bpf.RetConstant{Val: keep},
			bpf.LoadIndirect{Off: offMsgType, Size: 2},
			bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: newgen, SkipTrue: 1},
			bpf.RetConstant{Val: keep},
			bpf.LoadIndirect{Off: offAttrType, Size: 2},
			bpf.JumpIf{Cond: bpf.JumpEqual, Val: be16(1), SkipTrue: 1},
			bpf.RetConstant{Val: keep},
		)
		// The table's name: ours is kept; any other skips to next.
		cmp := []bpf.Instruction{
			bpf.LoadIndirect{Off: offAttrLen, Size: 2},
			bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: be16(uint16(4 + len(table) + 1))},
		}
		for i := 0; i < len(name); i += 4 {
			var word [4]byte
			n := copy(word[:], name[i:])
			cmp = append(cmp, bpf.LoadIndirect{Off: uint32(offAttrVal + i), Size: 4})
			if n < 4 {
				cmp = append(cmp, bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: ^uint32(0) << (8 * (4 - n))})
			}
			cmp = append(cmp, bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: binary.BigEndian.Uint32(word[:])})
		}
		cmp = append(cmp, bpf.RetConstant{Val: keep})
		for i, in := range cmp {
			if j, ok := in.(bpf.JumpIf); ok {
				j.SkipTrue = uint8(len(cmp) - i - 1) // to next
				cmp[i] = j
			}
		}
		m = append(m, cmp...)
		// next: X += the message's length, rounded up to four bytes. A
		// length of 64 KiB or more, or under a header's, is beyond the
		// filter: keep.
		lo, hi := uint32(0), uint32(1) // little-endian: the low byte first
		rest := uint32(2)
		if binary.NativeEndian.Uint16([]byte{0, 1}) == 1 { // big-endian
			lo, hi, rest = 3, 2, 0
		}
		m = append(m,
			bpf.TXA{},
			bpf.StoreScratch{Src: bpf.RegA, N: 0},
			bpf.LoadIndirect{Off: offMsgLen + rest, Size: 2},
			bpf.JumpIf{Cond: bpf.JumpEqual, Val: 0, SkipTrue: 1},
			bpf.RetConstant{Val: keep},
			bpf.LoadIndirect{Off: offMsgLen + hi, Size: 1},
			bpf.ALUOpConstant{Op: bpf.ALUOpShiftLeft, Val: 8},
			bpf.StoreScratch{Src: bpf.RegA, N: 1},
			bpf.LoadIndirect{Off: offMsgLen + lo, Size: 1},
			bpf.LoadScratch{Dst: bpf.RegX, N: 1},
			bpf.ALUOpX{Op: bpf.ALUOpAdd},
			bpf.JumpIf{Cond: bpf.JumpGreaterOrEqual, Val: unix.NLMSG_HDRLEN, SkipTrue: 1},
			bpf.RetConstant{Val: keep},
			bpf.ALUOpConstant{Op: bpf.ALUOpAdd, Val: 3},
			bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: ^uint32(3)},
			bpf.LoadScratch{Dst: bpf.RegX, N: 0},
			bpf.ALUOpX{Op: bpf.ALUOpAdd},
			bpf.TAX{},
		)
		return m
	}
	one := msg()
	n := min(filterMsgs, (bpfMaxInsns-len(ins)-4)/len(one))
	for range n {
		ins = append(ins, one...)
	}
	// More messages than the filter looks at: keep.
	ins = append(ins,
		bpf.LoadExtension{Num: bpf.ExtLen},
		bpf.JumpIfX{Cond: bpf.JumpGreaterThan, SkipTrue: 1},
		bpf.RetConstant{Val: drop},
		bpf.RetConstant{Val: keep},
	)
	return bpf.Assemble(ins)
}

// bpfMaxInsns is the kernel's bound on a classic BPF program (BPF_MAXINSNS).
const bpfMaxInsns = 4096

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
		if family != unix.NFPROTO_INET || tableOf(attrs) != table {
			continue
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

// tableOf returns the table a notification is about: its first
// attribute, which the kernel writes first in every notification of an
// object (attribute 1, NFTA_TABLE_NAME, NFTA_CHAIN_TABLE, NFTA_SET_TABLE
// and so on), or "". The monitor's socket filter reads it at the same
// place.
func tableOf(attrs []byte) string {
	if len(attrs) < 4 {
		return ""
	}
	l := int(binary.NativeEndian.Uint16(attrs))
	if l < 4 || l > len(attrs) || binary.NativeEndian.Uint16(attrs[2:]) != 1 {
		return ""
	}
	v := attrs[4:l]
	if len(v) == 0 || v[len(v)-1] != 0 {
		return "" // the kernel writes a name and one NUL
	}
	return string(v[:len(v)-1])
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
