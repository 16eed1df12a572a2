package nft

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// The drop sample reaches fqdngate over nfnetlink_log: the enforce chain's
// log rule hands a rate-limited sample of default deny's packets to an
// nflog group, and the backend binds that group. The subscription is a
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

// readDrops hands each sampled packet to OnDrop until ctx ends, then
// closes c.
func (b *Backend) readDrops(ctx context.Context, c *netlink.Conn) {
	stop := context.AfterFunc(ctx, b.closeNflog)
	defer stop()
	defer b.closeNflog()
	for {
		msgs, err := c.Receive()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if errors.Is(err, unix.ENOBUFS) {
				// The kernel does not say how many; at least one.
				b.dropSamplesLost.Add(1)
				continue
			}
			b.log.Warn("drop samples will no longer reach the audit log", "err", err)
			return
		}
		for _, m := range msgs {
			if m.Header.Type != netlink.HeaderType(unix.NFNL_SUBSYS_ULOG<<8|nfulnlMsgPacket) {
				continue
			}
			pi, ours, ok := parseNflog(m.Data)
			switch {
			case !ours:
			case !ok:
				b.dropSamplesLost.Add(1)
			default:
				b.dropSamples.Add(1)
				b.cfg.OnDrop(pi.src, pi.dst, pi.proto, pi.port)
			}
		}
	}
}

// parseNflog reads one NFULNL_MSG_PACKET (after the netlink header). ours
// is false for packets other rules logged to the group; ok is false when
// the packet is not one the audit log can describe.
func parseNflog(data []byte) (pi packetInfo, ours, ok bool) {
	if len(data) < 4 {
		return pi, false, false
	}
	ad, err := netlink.NewAttributeDecoder(data[4:])
	if err != nil {
		return pi, false, false
	}
	var payload, prefix []byte
	for ad.Next() {
		switch ad.Type() {
		case nfulaPayload:
			payload = ad.Bytes()
		case nfulaPrefix:
			prefix = ad.Bytes()
		}
	}
	if ad.Err() != nil {
		return pi, false, false
	}
	if !bytes.Equal(bytes.TrimRight(prefix, "\x00"), []byte(logPrefix)) {
		return pi, false, false
	}
	pi, ok = parsePacket(payload)
	return pi, true, ok
}
