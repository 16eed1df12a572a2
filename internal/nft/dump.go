package nft

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// dumpedElem is one element of a set dump: its key and, for an element
// with a timeout, the time it has left.
type dumpedElem struct {
	key     []byte
	expires time.Duration
}

// dumpSetElements lists a set's elements with a netlink dump, as
// nftables.Conn.GetSetElements does, and also reports whether the kernel
// flagged the dump as interrupted (NLM_F_DUMP_INTR: the ruleset, or a
// set's garbage collection, changed the table's generation between two
// of the dump's messages, so elements may be missing or repeated).
// google/nftables and mdlayher/netlink drop that flag; nft retries such
// a dump, and so do callers of this one.
func dumpSetElements(c *netlink.Conn, family uint8, table, set string) (elems []dumpedElem, interrupted bool, err error) {
	ae := netlink.NewAttributeEncoder()
	ae.String(unix.NFTA_SET_ELEM_LIST_TABLE, table)
	ae.String(unix.NFTA_SET_ELEM_LIST_SET, set)
	attrs, err := ae.Encode()
	if err != nil {
		return nil, false, err
	}
	msgs, err := c.Execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETSETELEM), Flags: netlink.Request | netlink.Dump},
		Data:   append([]byte{family, unix.NFNETLINK_V0, 0, 0}, attrs...),
	})
	if err != nil {
		return nil, false, err
	}
	for _, m := range msgs {
		if m.Header.Flags&netlink.DumpInterrupted != 0 {
			interrupted = true
		}
		if len(m.Data) < 4 {
			continue
		}
		if elems, err = decodeElemList(m.Data[4:], elems); err != nil {
			return nil, false, fmt.Errorf("decoding set %s: %w", set, err)
		}
	}
	return elems, interrupted, nil
}

func decodeElemList(b []byte, elems []dumpedElem) ([]dumpedElem, error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return elems, err
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		if ad.Type() != unix.NFTA_SET_ELEM_LIST_ELEMENTS {
			continue
		}
		ad.Nested(func(ad *netlink.AttributeDecoder) error {
			for ad.Next() {
				if ad.Type() != unix.NFTA_LIST_ELEM {
					continue
				}
				var e dumpedElem
				ad.Nested(func(ad *netlink.AttributeDecoder) error {
					for ad.Next() {
						switch ad.Type() {
						case unix.NFTA_SET_ELEM_KEY:
							ad.Nested(func(ad *netlink.AttributeDecoder) error {
								for ad.Next() {
									if ad.Type() == unix.NFTA_DATA_VALUE {
										e.key = ad.Bytes()
									}
								}
								return nil
							})
						case unix.NFTA_SET_ELEM_EXPIRATION:
							e.expires = time.Duration(ad.Uint64()) * time.Millisecond
						}
					}
					return nil
				})
				elems = append(elems, e)
			}
			return nil
		})
	}
	return elems, ad.Err()
}
