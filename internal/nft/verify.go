package nft

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// verifyChunk is how many elements verify asks the kernel for at once:
// one sendmsg of gets, whose replies queue on the socket before it reads
// them (see getElems).
const verifyChunk = 512

// verify checks the learned elements adopt took from the state file
// against the kernel, once, after the start: each is asked for with a
// get, which costs the kernel a hash lookup and a reply of its own (10-18
// µs of CPU an element, kernel and fqdngate), where a set dump costs it
// a walk of the set per message. It takes at most half a CPU, so at
// 1,000,000 elements it runs for 20 to 40 seconds. An element the kernel holds gets the
// expiry the kernel reports (later than the file's if an answer extended
// it after the file was last written); one it does not hold leaves the
// mirror, and the next answer that needs it adds it again.
//
// Until its element is checked, the mirror trusts the file: an answer
// whose address it says the kernel holds long enough costs no
// transaction. The kernel holds such an element unless the previous
// process deleted it after its last write of the file and then crashed
// (the per-name cap evicted it), or another process deleted it while no
// fqdngate ran; a connection to it fails until verify reaches it.
func (b *Backend) verify(ctx context.Context) {
	start := time.Now()
	g, err := openElemConn(b.cfg.NetNSFd, b.cfg.Table)
	if err != nil {
		b.log.Warn("cannot check the learned addresses taken from the state file against the kernel; they are trusted until they expire", "err", err)
		return
	}
	defer g.Close()
	setBuffer(g.raw, unix.SO_RCVBUFFORCE, unix.SO_RCVBUF, 4<<20)
	var (
		keys             []elemKey
		exps             []wall
		checked, missing int
		failed           error
	)
	check := func() {
		now := b.now()
		left, err := g.getElems(keys)
		b.memMu.Lock()
		defer b.memMu.Unlock()
		if err != nil {
			failed = err
			return
		}
		for i, k := range keys {
			st := b.known[k]
			if !st.unverified() || st.expiry() != exps[i] {
				continue // Publish or Apply changed it meanwhile
			}
			checked++
			switch {
			case left[i] > 0:
				st.setExpiry(wallOf(now.Add(left[i])), false)
				b.known[k] = st
			case left[i] == 0:
				missing++
				b.mirrorDel(k)
				b.dirty = true
			} // < 0: the kernel refused the get; left to expire
		}
	}
	stopped := false
	b.memMu.Lock()
	for k, st := range b.known {
		if !st.unverified() {
			continue
		}
		keys, exps = append(keys, k), append(exps, st.expiry())
		if len(keys) == verifyChunk {
			b.memMu.Unlock()
			t := time.Now()
			check()
			keys, exps = keys[:0], exps[:0]
			// At most half a CPU: the daemon answers meanwhile.
			select {
			case <-ctx.Done():
			case <-time.After(time.Since(t)):
			}
			if stopped = failed != nil || ctx.Err() != nil; stopped {
				break
			}
			b.memMu.Lock()
		}
	}
	if !stopped {
		b.memMu.Unlock()
		if len(keys) > 0 {
			check()
		}
	}
	b.verified.Add(uint64(checked))
	b.verifyMissing.Add(uint64(missing))
	if failed != nil {
		b.log.Warn("checking the learned addresses taken from the state file failed; the unchecked ones are trusted until they expire", "checked", checked, "missing", missing, "err", failed)
		return
	}
	if checked > 0 {
		b.log.Info("checked the learned addresses taken from the state file against the kernel", "checked", checked, "missing", missing, "took", time.Since(start).Round(time.Millisecond))
	}
}

// getElems asks the kernel for each element of keys, one get message
// each, all in one sendmsg (the kernel answers each message, in order,
// before sendmsg returns), and returns the time each has left: 0 if the
// set does not hold it, -1 if the kernel refused the get.
func (w *elemConn) getElems(keys []elemKey) ([]time.Duration, error) {
	w.buf = w.buf[:0]
	first := w.seq + 1
	for _, k := range keys {
		off := w.msgStart(unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_GETSETELEM, unix.NLM_F_REQUEST)
		w.buf = append(w.buf, unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0)
		w.attrBytes(unix.NFTA_SET_ELEM_LIST_TABLE, w.table)
		w.attrString(unix.NFTA_SET_ELEM_LIST_SET, k.set())
		list := w.attrStart(unix.NFTA_SET_ELEM_LIST_ELEMENTS | unix.NLA_F_NESTED)
		item := w.attrStart(unix.NFTA_LIST_ELEM | unix.NLA_F_NESTED)
		key := w.attrStart(unix.NFTA_SET_ELEM_KEY | unix.NLA_F_NESTED)
		w.attrBytes(unix.NFTA_DATA_VALUE, k.addr().AsSlice())
		w.attrEnd(key)
		w.attrEnd(item)
		w.attrEnd(list)
		w.msgEnd(off)
	}
	if err := w.send(); err != nil {
		return nil, err
	}
	left := make([]time.Duration, len(keys))
	answered := make([]bool, len(keys))
	for n := 0; n < len(keys); {
		var (
			got  int
			rerr error
		)
		err := w.raw.Read(func(fd uintptr) bool {
			got, rerr = unix.Read(int(fd), w.rbuf)
			return rerr != unix.EAGAIN
		})
		if err == nil {
			err = rerr
		}
		if err != nil {
			// ENOBUFS: replies were lost; which ones is unknown.
			return nil, fmt.Errorf("reading replies: %w", err)
		}
		b := w.rbuf[:got]
		for len(b) >= unix.NLMSG_HDRLEN {
			l := int(binary.NativeEndian.Uint32(b))
			if l < unix.NLMSG_HDRLEN || l > len(b) {
				return nil, errors.New("malformed netlink reply")
			}
			typ := binary.NativeEndian.Uint16(b[4:])
			i := int(binary.NativeEndian.Uint32(b[8:]) - first)
			if i >= 0 && i < len(keys) && !answered[i] {
				answered[i] = true
				n++
				switch {
				case typ == unix.NLMSG_ERROR && l >= unix.NLMSG_HDRLEN+4:
					code := -int32(binary.NativeEndian.Uint32(b[unix.NLMSG_HDRLEN:]))
					if syscall.Errno(code) != unix.ENOENT {
						left[i] = -1
					}
				case typ == unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_NEWSETELEM && l > unix.NLMSG_HDRLEN+4:
					elems, err := decodeElemList(b[unix.NLMSG_HDRLEN+4:l], nil)
					if err != nil || len(elems) != 1 || elems[0].expires <= 0 {
						left[i] = -1
					} else {
						left[i] = elems[0].expires
					}
				default:
					left[i] = -1
				}
			}
			b = b[min(len(b), (l+3)&^3):]
		}
	}
	return left, nil
}
