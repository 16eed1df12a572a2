package nft

import (
	"encoding/binary"
	"reflect"
	"testing"

	"golang.org/x/sys/unix"
)

// notification encodes one nf_tables notification as the kernel sends it.
func notification(kind uint16, family uint8, port uint32, attrs ...[2]string) []byte {
	var body []byte
	body = append(body, family, unix.NFNETLINK_V0, 0, 0)
	for _, a := range attrs {
		typ := uint16(a[0][0])
		v := []byte(a[1])
		body = binary.NativeEndian.AppendUint16(body, uint16(4+len(v)))
		body = binary.NativeEndian.AppendUint16(body, typ)
		body = append(body, v...)
		for len(body)%4 != 0 {
			body = append(body, 0)
		}
	}
	msg := binary.NativeEndian.AppendUint32(nil, uint32(unix.NLMSG_HDRLEN+len(body)))
	msg = binary.NativeEndian.AppendUint16(msg, unix.NFNL_SUBSYS_NFTABLES<<8|kind)
	msg = binary.NativeEndian.AppendUint16(msg, 0)
	msg = binary.NativeEndian.AppendUint32(msg, 1)
	msg = binary.NativeEndian.AppendUint32(msg, port)
	return append(msg, body...)
}

func attr(typ uint16, v string) [2]string { return [2]string{string(rune(typ)), v} }

func TestParseNotifications(t *testing.T) {
	const ours, theirs = 100, 200
	table := attr(1, "fqdngate\x00")
	gen := notification(unix.NFT_MSG_NEWGEN, unix.AF_UNSPEC, theirs,
		attr(1, "\x00\x00\x00\x07"), attr(nftaGenProcPID, "\x00\x00\x10\x92"), attr(nftaGenProcName, "nft\x00"))
	for _, c := range []struct {
		name    string
		in      [][]byte
		changes []change
		procs   []proc
	}{
		{"table deleted", [][]byte{notification(unix.NFT_MSG_DELTABLE, unix.NFPROTO_INET, theirs, table)}, []change{{theirs, "table deleted"}}, nil},
		{"rule added", [][]byte{notification(unix.NFT_MSG_NEWRULE, unix.NFPROTO_INET, theirs, table, attr(unix.NFTA_RULE_CHAIN, "forward\x00"))}, []change{{theirs, "rule added to chain forward"}}, nil},
		{"element deleted", [][]byte{notification(unix.NFT_MSG_DELSETELEM, unix.NFPROTO_INET, theirs, table, attr(unix.NFTA_SET_ELEM_LIST_SET, "learn4.a\x00"))}, []change{{theirs, "element deleted from set learn4.a"}}, nil},
		{"ours", [][]byte{notification(unix.NFT_MSG_DELTABLE, unix.NFPROTO_INET, ours, table)}, nil, nil},
		{"expired by the kernel", [][]byte{notification(unix.NFT_MSG_DELSETELEM, unix.NFPROTO_INET, 0, table, attr(unix.NFTA_SET_ELEM_LIST_SET, "learn4.a\x00"))}, nil, nil},
		{"another table", [][]byte{notification(unix.NFT_MSG_DELTABLE, unix.NFPROTO_INET, theirs, attr(1, "other\x00"))}, nil, nil},
		{"another family", [][]byte{notification(unix.NFT_MSG_DELTABLE, unix.NFPROTO_IPV4, theirs, table)}, nil, nil},
		{"committer", [][]byte{gen}, nil, []proc{{theirs, 0x1092, "nft"}}},
		{"two in a datagram", [][]byte{
			notification(unix.NFT_MSG_DELRULE, unix.NFPROTO_INET, theirs, table, attr(unix.NFTA_RULE_CHAIN, "enforce\x00")),
			notification(unix.NFT_MSG_DELCHAIN, unix.NFPROTO_INET, theirs, table, attr(unix.NFTA_CHAIN_NAME, "enforce\x00")),
		}, []change{{theirs, "rule deleted from chain enforce"}, {theirs, "chain enforce deleted"}}, nil},
	} {
		var buf []byte
		for _, m := range c.in {
			buf = append(buf, m...)
		}
		changes, procs := parseNotifications(buf, "fqdngate", []uint32{ours, 101})
		if !reflect.DeepEqual(changes, c.changes) || !reflect.DeepEqual(procs, c.procs) {
			t.Errorf("%s: got %v %v, want %v %v", c.name, changes, procs, c.changes, c.procs)
		}
	}
}

// FuzzParseNotifications: whatever a datagram holds, parsing it neither
// panics nor reads past it.
func FuzzParseNotifications(f *testing.F) {
	f.Add(notification(unix.NFT_MSG_DELTABLE, unix.NFPROTO_INET, 7, attr(1, "fqdngate\x00")))
	f.Add(notification(unix.NFT_MSG_NEWGEN, unix.AF_UNSPEC, 7, attr(nftaGenProcPID, "\x00\x00\x00\x01"), attr(nftaGenProcName, "nft\x00")))
	f.Add(notification(unix.NFT_MSG_NEWSETELEM, unix.NFPROTO_INET, 7, attr(1, "fqdngate\x00"), attr(unix.NFTA_SET_ELEM_LIST_SET, "s\x00")))
	f.Fuzz(func(t *testing.T, b []byte) {
		parseNotifications(b, "fqdngate", []uint32{1})
	})
}
