package netns

import (
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// SquatTable replaces the inet table named table in ns, in one
// transaction, with an empty table owned by the returned socket: only that
// socket may change it, and the kernel deletes it when the socket closes
// (at the end of the test at the latest). Tests use it to take a table
// from under a running fqdngate in a way it cannot undo at once.
func SquatTable(t *testing.T, ns *NS, table string) *netlink.Conn {
	t.Helper()
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: ns.Fd()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	name, _ := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_TABLE_NAME, Data: append([]byte(table), 0)}})
	owned, _ := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: unix.NFTA_TABLE_NAME, Data: append([]byte(table), 0)},
		{Type: unix.NFTA_TABLE_FLAGS, Data: []byte{0, 0, 0, 2}}, // NFT_TABLE_F_OWNER, big-endian
	})
	hdr := []byte{unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0}
	batch := []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, unix.NFNL_SUBSYS_NFTABLES}
	msgs := []netlink.Message{
		{Header: netlink.Header{Type: unix.NFNL_MSG_BATCH_BEGIN, Flags: netlink.Request}, Data: batch},
		{Header: netlink.Header{Type: unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_DELTABLE, Flags: netlink.Request | netlink.Acknowledge}, Data: append(hdr, name...)},
		{Header: netlink.Header{Type: unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWTABLE, Flags: netlink.Request | netlink.Acknowledge | netlink.Create}, Data: append(hdr, owned...)},
		{Header: netlink.Header{Type: unix.NFNL_MSG_BATCH_END, Flags: netlink.Request}, Data: batch},
	}
	if _, err := c.SendMessages(msgs); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := c.Receive(); err != nil {
			t.Fatalf("replacing the table with an owned one: %v", err)
		}
	}
	return c
}
