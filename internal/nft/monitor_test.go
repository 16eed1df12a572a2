package nft

import (
	"encoding/binary"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/net/bpf"
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

// filterVM runs the monitor's socket filter for ports conn and elems and
// table as the kernel would, in golang.org/x/net/bpf's interpreter.
func filterVM(t testing.TB, conn, elems uint32, table string) func([]byte) bool {
	t.Helper()
	raw, err := monitorFilter(conn, elems, table)
	if err != nil {
		t.Fatal(err)
	}
	if len(raw) > bpfMaxInsns {
		t.Fatalf("the filter has %d instructions; the kernel takes at most %d", len(raw), bpfMaxInsns)
	}
	ins, ok := bpf.Disassemble(raw)
	if !ok {
		t.Fatal("the filter does not disassemble")
	}
	vm, err := bpf.NewVM(ins)
	if err != nil {
		t.Fatal(err)
	}
	return func(b []byte) bool {
		n, err := vm.Run(b)
		if err != nil {
			t.Fatal(err)
		}
		return n != 0
	}
}

func TestMonitorFilter(t *testing.T) {
	const conn, elems, theirs = 100, 101, 200
	ours := attr(1, "fqdngate\x00")
	elem := func(port uint32, table [2]string) []byte {
		return notification(unix.NFT_MSG_NEWSETELEM, unix.NFPROTO_INET, port, table, attr(unix.NFTA_SET_ELEM_LIST_SET, "learn4.a\x00"))
	}
	other := attr(1, "kube-proxy\x00")
	gen := func(port uint32) []byte {
		return notification(unix.NFT_MSG_NEWGEN, unix.AF_UNSPEC, port, attr(1, "\x00\x00\x00\x07"), attr(nftaGenProcName, "nft\x00"))
	}
	many := func(n int, last []byte) [][]byte {
		var out [][]byte
		for range n {
			out = append(out, elem(theirs, other))
		}
		return append(out, last)
	}
	for _, c := range []struct {
		name string
		in   [][]byte
		keep bool
	}{
		{"our table", [][]byte{elem(theirs, ours)}, true},
		{"another table", [][]byte{elem(theirs, other)}, false},
		{"another table, then ours", [][]byte{elem(theirs, other), elem(theirs, other), notification(unix.NFT_MSG_DELTABLE, unix.NFPROTO_INET, theirs, ours)}, true},
		{"ours, then another", [][]byte{elem(theirs, ours), elem(theirs, other)}, true},
		{"a name of the same length", [][]byte{elem(theirs, attr(1, "fqdngatf\x00"))}, false},
		{"a longer name", [][]byte{elem(theirs, attr(1, "fqdngate2\x00"))}, false},
		{"a shorter name", [][]byte{elem(theirs, attr(1, "fqdngat\x00"))}, false},
		{"our name in another family", [][]byte{notification(unix.NFT_MSG_DELTABLE, unix.NFPROTO_IPV4, theirs, ours)}, true},
		{"no table attribute first", [][]byte{notification(unix.NFT_MSG_NEWSETELEM, unix.NFPROTO_INET, theirs, attr(unix.NFTA_SET_ELEM_LIST_SET, "x\x00"), other)}, true},
		{"a committer", [][]byte{gen(theirs)}, true},
		{"their elements, then a committer", [][]byte{elem(theirs, other), gen(theirs)}, true},
		{"our elements socket", [][]byte{elem(elems, ours)}, false},
		{"our ruleset socket", [][]byte{elem(conn, ours)}, false},
		{"our ruleset socket's commit", [][]byte{gen(conn)}, true},
		{"more messages than the filter reads", many(filterMsgs, elem(theirs, other)), true},
		{"as many as it reads", many(filterMsgs-1, elem(theirs, other)), false},
		{"ours after as many as it reads", many(filterMsgs-1, elem(theirs, ours)), true},
		{"cut short", [][]byte{elem(theirs, other)[:30]}, true},
		{"empty", [][]byte{{}}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			var b []byte
			for _, m := range c.in {
				b = append(b, m...)
			}
			if got := filterVM(t, conn, elems, "fqdngate")(b); got != c.keep {
				t.Errorf("kept = %v, want %v", got, c.keep)
			}
		})
	}
	// Every length of table name the kernel takes (NFT_NAME_MAXLEN 256,
	// NUL included) fits, and matches itself only.
	for _, n := range []int{1, 2, 3, 4, 5, 7, 8, 63, 64, 255} {
		name := strings.Repeat("t", n)
		keep := filterVM(t, conn, elems, name)
		if !keep(elem(theirs, attr(1, name+"\x00"))) {
			t.Errorf("a table named with %d characters: its own notification is dropped", n)
		}
		if keep(elem(theirs, attr(1, name+"u\x00"))) || keep(elem(theirs, attr(1, "u"+name[1:]+"\x00"))) {
			t.Errorf("a table named with %d characters: another table's notification is kept", n)
		}
	}
}

// FuzzMonitorFilter: the filter drops nothing parseNotifications would
// act on. Whatever a datagram from another socket holds, if the filter
// drops it, parsing it finds no change to the table and no committer.
func FuzzMonitorFilter(f *testing.F) {
	const conn, elems, theirs = 100, 101, 200
	ours, other := attr(1, "fqdngate\x00"), attr(1, "other\x00")
	f.Add(notification(unix.NFT_MSG_NEWSETELEM, unix.NFPROTO_INET, theirs, other))
	f.Add(append(notification(unix.NFT_MSG_NEWSETELEM, unix.NFPROTO_INET, theirs, other), notification(unix.NFT_MSG_DELTABLE, unix.NFPROTO_INET, theirs, ours)...))
	f.Add(notification(unix.NFT_MSG_NEWGEN, unix.AF_UNSPEC, theirs, attr(nftaGenProcPID, "\x00\x00\x00\x01")))
	keep := filterVM(f, conn, elems, "fqdngate")
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) >= unix.NLMSG_HDRLEN {
			if port := binary.NativeEndian.Uint32(b[12:]); port == conn || port == elems {
				return // our own: dropped by port, not by table
			}
		}
		if keep(b) {
			return
		}
		if changes, procs := parseNotifications(b, "fqdngate", []uint32{conn, elems}); len(changes) != 0 || len(procs) != 0 {
			t.Errorf("the filter drops a datagram with changes %v and committers %v", changes, procs)
		}
	})
}
