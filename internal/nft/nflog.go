package nft

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// The drop sample reaches fqdngate over nfnetlink_log: the enforce chain's
// log rule hands a rate-limited sample of default deny's packets to an
// nflog group, and the backend binds that group. The allow log
// (allowlog.go) comes the same way, over a group of its own, so a burst of
// new connections cannot crowd out the drop sample. The subscription is a
// few messages of linux/netfilter/nfnetlink_log.h, spoken here over the
// netlink package nftables already uses rather than through another
// module.

// From linux/netfilter/nfnetlink_log.h.
const (
	nfulnlMsgPacket = 0
	nfulnlMsgConfig = 1

	nfulaPayload = 9
	nfulaPrefix  = 10

	nfulaCfgCmd     = 1
	nfulaCfgMode    = 2
	nfulaCfgQThresh = 5

	nfulnlCfgCmdBind = 1
	nfulnlCopyPacket = 2
)

// nflogCopy is how much of each packet the kernel copies: enough for an
// IPv6 header, a few extension headers and the ports.
const nflogCopy = 256

// nflogRcvBuf is the socket's receive buffer. At the default sample rate
// of 10 a second it holds minutes of samples; what overflows it is lost
// and counted.
const nflogRcvBuf = 256 << 10

// openNflog binds group in the namespace netnsFd (0: the current one).
// Only one socket may bind a group in a namespace.
func openNflog(netnsFd int, group uint16) (*netlink.Conn, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: netnsFd})
	if err != nil {
		return nil, netlinkErr("opening nflog socket", err)
	}
	mode := make([]byte, 6) // struct nfulnl_msg_config_mode: be32 range, u8 mode, pad
	binary.BigEndian.PutUint32(mode, nflogCopy)
	mode[4] = nfulnlCopyPacket
	qthresh := binary.BigEndian.AppendUint32(nil, 1) // each sample at once
	for _, attr := range []netlink.Attribute{
		{Type: nfulaCfgCmd, Data: []byte{nfulnlCfgCmdBind}},
		{Type: nfulaCfgMode, Data: mode},
		{Type: nfulaCfgQThresh, Data: qthresh},
	} {
		data, err := netlink.MarshalAttributes([]netlink.Attribute{attr})
		if err != nil {
			c.Close()
			return nil, err
		}
		msg := netlink.Message{
			Header: netlink.Header{
				Type:  netlink.HeaderType(unix.NFNL_SUBSYS_ULOG<<8 | nfulnlMsgConfig),
				Flags: netlink.Request | netlink.Acknowledge,
			},
			Data: append(nfgenmsg(unix.AF_UNSPEC, group), data...),
		}
		if _, err := c.Execute(msg); err != nil {
			c.Close()
			if errors.Is(err, unix.EBUSY) {
				return nil, fmt.Errorf("nflog group %d is bound by another process; pick another group", group)
			}
			return nil, netlinkErr(fmt.Sprintf("binding nflog group %d", group), err)
		}
	}
	if err := c.SetReadBuffer(nflogRcvBuf); err != nil {
		c.Close()
		return nil, fmt.Errorf("nftables: sizing nflog socket: %w", err)
	}
	return c, nil
}

// nfgenmsg is struct nfgenmsg: family, version 0, and the group
// (big-endian) as resource id.
func nfgenmsg(family uint8, group uint16) []byte {
	return []byte{family, unix.NFNETLINK_V0, byte(group >> 8), byte(group)}
}

// readNflog hands each packet logged to c's group to handle until ctx
// ends, then closes c (with closeFn). lost counts what the socket could
// not hold; what is the log, for the warning if reading fails.
func (b *Backend) readNflog(ctx context.Context, c *netlink.Conn, closeFn func(), lost *atomic.Uint64, what string, handle func(prefix string, payload []byte)) {
	stop := context.AfterFunc(ctx, closeFn)
	defer stop()
	defer closeFn()
	for {
		msgs, err := c.Receive()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if errors.Is(err, unix.ENOBUFS) {
				// The kernel does not say how many; at least one.
				lost.Add(1)
				continue
			}
			b.log.Warn(what+" will no longer reach the audit log", "err", err)
			return
		}
		for _, m := range msgs {
			if m.Header.Type != netlink.HeaderType(unix.NFNL_SUBSYS_ULOG<<8|nfulnlMsgPacket) {
				continue
			}
			if prefix, payload, ok := parseNflog(m.Data); ok {
				handle(prefix, payload)
			}
		}
	}
}

// handleDrop hands one drop sample to Config.OnDrop.
func (b *Backend) handleDrop(prefix string, payload []byte) {
	if prefix != logPrefix {
		return // another rule logged to the group
	}
	pi, ok := parsePacket(payload)
	if !ok {
		b.dropSamplesLost.Add(1)
		return
	}
	b.dropSamples.Add(1)
	b.cfg.OnDrop(pi.src, pi.dst, pi.proto, pi.port)
}

// parseNflog reads one NFULNL_MSG_PACKET (after the netlink header): the
// rule's log prefix and the packet from its network header. ok is false
// when the message does not parse.
func parseNflog(data []byte) (prefix string, payload []byte, ok bool) {
	if len(data) < 4 {
		return "", nil, false
	}
	ad, err := netlink.NewAttributeDecoder(data[4:])
	if err != nil {
		return "", nil, false
	}
	var pfx []byte
	for ad.Next() {
		switch ad.Type() {
		case nfulaPayload:
			payload = ad.Bytes()
		case nfulaPrefix:
			pfx = ad.Bytes()
		}
	}
	if ad.Err() != nil {
		return "", nil, false
	}
	return string(bytes.TrimRight(pfx, "\x00")), payload, true
}
