package nft

import (
	"encoding/binary"
	"fmt"
	"os"
	"strings"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// kernelIdent is what the kernel calls the table and its sets, for the
// state file (see stateIdent): the sets' elements in the file may stand
// for the kernel's only while these names are the same.
type kernelIdent struct {
	table stateIdent        // Boot "" if unknown
	sets  map[string]uint64 // handle by set name
	gen   uint64            // counts the changes, see stateLocked
}

// bootID returns the kernel's boot id, "" if it cannot be read.
func bootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// netnsIno returns the inode of the network namespace fd is (or, if fd is
// 0, the process's), 0 if unknown.
func netnsIno(fd int) uint64 {
	var st unix.Stat_t
	var err error
	if fd != 0 {
		err = unix.Fstat(fd, &st)
	} else {
		err = unix.Stat("/proc/self/ns/net", &st)
	}
	if err != nil {
		return 0
	}
	return st.Ino
}

// queryHandles returns the handles of the table and of its sets. The
// kernel numbers a namespace's tables, and a table's sets, in the order
// it makes them, never twice in a boot.
func queryHandles(c *netlink.Conn, family uint8, table string) (uint64, map[string]uint64, error) {
	ae := netlink.NewAttributeEncoder()
	ae.String(unix.NFTA_TABLE_NAME, table)
	attrs, err := ae.Encode()
	if err != nil {
		return 0, nil, err
	}
	msgs, err := c.Execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETTABLE), Flags: netlink.Request},
		Data:   append([]byte{family, unix.NFNETLINK_V0, 0, 0}, attrs...),
	})
	if err != nil {
		return 0, nil, fmt.Errorf("reading table %s: %w", table, err)
	}
	var th uint64
	for _, m := range msgs {
		if len(m.Data) > 4 {
			th = handleAttr(m.Data[4:], nftaTableHandle, nil, 0)
		}
	}
	ae = netlink.NewAttributeEncoder()
	ae.String(unix.NFTA_SET_TABLE, table)
	if attrs, err = ae.Encode(); err != nil {
		return 0, nil, err
	}
	msgs, err = c.Execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETSET), Flags: netlink.Request | netlink.Dump},
		Data:   append([]byte{family, unix.NFNETLINK_V0, 0, 0}, attrs...),
	})
	if err != nil {
		return 0, nil, fmt.Errorf("listing sets of table %s: %w", table, err)
	}
	sets := make(map[string]uint64, len(msgs))
	for _, m := range msgs {
		if len(m.Data) <= 4 {
			continue
		}
		var name string
		if h := handleAttr(m.Data[4:], nftaSetHandle, &name, unix.NFTA_SET_NAME); name != "" && h != 0 {
			sets[name] = h
		}
	}
	if th == 0 {
		return 0, nil, fmt.Errorf("table %s: the kernel reported no handle", table)
	}
	return th, sets, nil
}

// handleAttr returns the 64-bit big-endian attribute typ of b, and sets
// *name to the string attribute nameTyp if name is not nil.
func handleAttr(b []byte, typ uint16, name *string, nameTyp uint16) uint64 {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return 0
	}
	ad.ByteOrder = binary.BigEndian
	var h uint64
	for ad.Next() {
		switch {
		case ad.Type() == typ && len(ad.Bytes()) == 8:
			h = ad.Uint64()
		case name != nil && ad.Type() == nameTyp:
			*name = ad.String()
		}
	}
	return h
}
