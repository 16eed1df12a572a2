package nft

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// elemConn programs learned elements: the hot path, one transaction per
// flush. It speaks the few nf_tables messages that takes over its own
// netlink socket, into a reused buffer, instead of through nftables.Conn,
// which allocates a few hundred bytes per element and a page per
// acknowledgement and reads one acknowledgement per message.
//
// The messages ask for no acknowledgement. The kernel runs an nfnetlink
// batch inside sendmsg: when write returns, the transaction is committed
// or aborted, and if aborted its errors are already queued on the socket
// (nft itself relies on this, reading its replies without waiting). So one
// non-blocking read after the write confirms the transaction: nothing
// queued means committed.
type elemConn struct {
	c     *netlink.Conn
	raw   syscall.RawConn
	table []byte // NUL-terminated
	// expiration: send each element's expiration along with its timeout.
	expiration bool
	seq        uint32
	buf        []byte // the batch being built
	rbuf       []byte // replies
	// msgs maps the sequence numbers of this batch's messages to their
	// sets, to name the set in an error.
	msgs []seqSet
}

type seqSet struct {
	seq uint32
	set string
}

func openElemConn(netnsFd int, table string) (*elemConn, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: netnsFd})
	if err != nil {
		return nil, netlinkErr("opening netlink", err)
	}
	// Errors without a copy of the failed message, which may be tens of
	// kilobytes: the errno is all commit reads.
	if err := c.SetOption(netlink.CapAcknowledge, true); err != nil {
		c.Close()
		return nil, netlinkErr("opening netlink", err)
	}
	raw, err := c.SyscallConn()
	if err != nil {
		c.Close()
		return nil, netlinkErr("opening netlink", err)
	}
	return &elemConn{c: c, raw: raw, table: append([]byte(table), 0), rbuf: make([]byte, 8192)}, nil
}

func (w *elemConn) Close() error { return w.c.Close() }

// begin starts a batch.
func (w *elemConn) begin() {
	w.buf = w.buf[:0]
	w.msgs = w.msgs[:0]
	w.batchMsg(unix.NFNL_MSG_BATCH_BEGIN)
}

func (w *elemConn) batchMsg(typ uint16) {
	off := w.msgStart(typ, unix.NLM_F_REQUEST)
	w.buf = append(w.buf, unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, unix.NFNL_SUBSYS_NFTABLES)
	w.msgEnd(off)
}

// elem is one element of a message: a delete needs only the key.
type elem struct {
	addr    netip.Addr
	timeout time.Duration // 0 in deletes
}

// add queues a message adding elems to set (or, if del, deleting them).
// Without NLM_F_EXCL an element the set holds is not an error. Linux 6.10
// and later update such an element's expiry, but only if the message
// carries an expiration or a timeout other than the element's: a second
// answer with the same TTL gives the same timeout, so with expiration set
// every element carries one. Older kernels keep the old expiry either way
// (see Backend.replaceToExtend) and are sent none.
func (w *elemConn) add(set string, elems []elem, del bool) {
	typ, flags := uint16(unix.NFT_MSG_NEWSETELEM), uint16(unix.NLM_F_REQUEST|unix.NLM_F_CREATE)
	if del {
		typ, flags = unix.NFT_MSG_DELSETELEM, unix.NLM_F_REQUEST
	}
	off := w.msgStart(unix.NFNL_SUBSYS_NFTABLES<<8|typ, flags)
	w.msgs = append(w.msgs, seqSet{w.seq, set})
	w.buf = append(w.buf, unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0)
	w.attrBytes(unix.NFTA_SET_ELEM_LIST_TABLE, w.table)
	w.attrString(unix.NFTA_SET_ELEM_LIST_SET, set)
	list := w.attrStart(unix.NFTA_SET_ELEM_LIST_ELEMENTS | unix.NLA_F_NESTED)
	for _, e := range elems {
		item := w.attrStart(unix.NFTA_LIST_ELEM | unix.NLA_F_NESTED)
		key := w.attrStart(unix.NFTA_SET_ELEM_KEY | unix.NLA_F_NESTED)
		v := w.attrStart(unix.NFTA_DATA_VALUE)
		if e.addr.Is4() {
			a := e.addr.As4()
			w.buf = append(w.buf, a[:]...)
		} else {
			a := e.addr.As16()
			w.buf = append(w.buf, a[:]...)
		}
		w.attrEnd(v)
		w.attrEnd(key)
		if e.timeout > 0 {
			ms := uint64(e.timeout.Milliseconds())
			t := w.attrStart(unix.NFTA_SET_ELEM_TIMEOUT)
			w.buf = binary.BigEndian.AppendUint64(w.buf, ms)
			w.attrEnd(t)
			if w.expiration {
				t := w.attrStart(unix.NFTA_SET_ELEM_EXPIRATION)
				w.buf = binary.BigEndian.AppendUint64(w.buf, ms)
				w.attrEnd(t)
			}
		}
		w.attrEnd(item)
	}
	w.attrEnd(list)
	w.msgEnd(off)
}

// commit sends the batch and reports whether the kernel committed it.
func (w *elemConn) commit() error {
	w.batchMsg(unix.NFNL_MSG_BATCH_END)
	if err := w.send(); err != nil {
		return err
	}
	var errs []error
	for {
		var (
			n    int
			rerr error
		)
		err := w.raw.Read(func(fd uintptr) bool {
			n, rerr = unix.Read(int(fd), w.rbuf)
			return true // never wait: see the type's comment
		})
		if err == nil {
			err = rerr
		}
		if err == unix.EAGAIN {
			break
		}
		if err != nil {
			// ENOBUFS: a reply was lost, so the outcome is unknown; the
			// caller fails, and the next Publish sends the elements again.
			return errors.Join(append(errs, fmt.Errorf("reading replies: %w", err))...)
		}
		errs = append(errs, w.replyErrors(w.rbuf[:n])...)
	}
	return errors.Join(errs...)
}

// send writes the messages built in buf, in one sendmsg.
func (w *elemConn) send() error {
	var werr error
	err := w.raw.Write(func(fd uintptr) bool {
		_, werr = unix.Write(int(fd), w.buf)
		return werr != unix.EAGAIN
	})
	if err == nil {
		err = werr
	}
	if err != nil {
		return fmt.Errorf("sending: %w", err)
	}
	return nil
}

// replyErrors returns the errors among the messages of one datagram.
func (w *elemConn) replyErrors(b []byte) []error {
	var errs []error
	for len(b) >= unix.NLMSG_HDRLEN {
		l := int(binary.NativeEndian.Uint32(b))
		if l < unix.NLMSG_HDRLEN {
			return append(errs, errors.New("malformed netlink reply"))
		}
		l = min(l, len(b)) // a reply longer than rbuf was cut short
		typ := binary.NativeEndian.Uint16(b[4:])
		seq := binary.NativeEndian.Uint32(b[8:])
		if typ == unix.NLMSG_ERROR && l >= unix.NLMSG_HDRLEN+4 {
			if code := int32(binary.NativeEndian.Uint32(b[unix.NLMSG_HDRLEN:])); code != 0 {
				err := error(syscall.Errno(-code))
				for _, m := range w.msgs {
					if m.seq == seq {
						err = fmt.Errorf("set %s: %w", m.set, err)
					}
				}
				errs = append(errs, err)
			}
		}
		b = b[min(len(b), (l+3)&^3):]
	}
	return errs
}

func (w *elemConn) msgStart(typ, flags uint16) int {
	off := len(w.buf)
	w.seq++
	w.buf = binary.NativeEndian.AppendUint32(w.buf, 0) // length, set by msgEnd
	w.buf = binary.NativeEndian.AppendUint16(w.buf, typ)
	w.buf = binary.NativeEndian.AppendUint16(w.buf, flags)
	w.buf = binary.NativeEndian.AppendUint32(w.buf, w.seq)
	w.buf = binary.NativeEndian.AppendUint32(w.buf, 0) // port id: the kernel's
	return off
}

func (w *elemConn) msgEnd(off int) {
	binary.NativeEndian.PutUint32(w.buf[off:], uint32(len(w.buf)-off))
}

func (w *elemConn) attrStart(typ uint16) int {
	off := len(w.buf)
	w.buf = binary.NativeEndian.AppendUint16(w.buf, 0)
	w.buf = binary.NativeEndian.AppendUint16(w.buf, typ)
	return off
}

// attrEnd sets the attribute's length and pads it to 4 bytes.
func (w *elemConn) attrEnd(off int) {
	binary.NativeEndian.PutUint16(w.buf[off:], uint16(len(w.buf)-off))
	for len(w.buf)%4 != 0 {
		w.buf = append(w.buf, 0)
	}
}

func (w *elemConn) attrBytes(typ uint16, v []byte) {
	off := w.attrStart(typ)
	w.buf = append(w.buf, v...)
	w.attrEnd(off)
}

func (w *elemConn) attrString(typ uint16, s string) {
	off := w.attrStart(typ)
	w.buf = append(w.buf, s...)
	w.buf = append(w.buf, 0)
	w.attrEnd(off)
}
