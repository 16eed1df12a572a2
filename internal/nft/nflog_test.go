package nft

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/mdlayher/netlink"

	"github.com/fqdngate/fqdngate/internal/policy"
)

// nflogMessage is an NFULNL_MSG_PACKET body as the kernel sends it.
func nflogMessage(prefix string, pkt []byte) []byte {
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: 1, Data: []byte{0x08, 0x00, 2, 0}}, // NFULA_PACKET_HDR
		{Type: nfulaPrefix, Data: append([]byte(prefix), 0)},
		{Type: nfulaPayload, Data: pkt},
	})
	if err != nil {
		panic(err)
	}
	return append(nfgenmsg(2, DefaultLogGroup), attrs...)
}

func TestParseNflog(t *testing.T) {
	pkt := ipv4(6, "198.51.100.10", "192.0.2.4", ports(443))
	prefix, payload, ok := parseNflog(nflogMessage(logPrefix, pkt))
	if !ok || prefix != logPrefix || !bytes.Equal(payload, pkt) {
		t.Errorf("parseNflog = %q, %x, %v; want %q, the packet, true", prefix, payload, ok, logPrefix)
	}
	for _, bad := range [][]byte{nil, {1, 2}, {2, 0, 0, 0, 9, 0}} {
		if _, _, ok := parseNflog(bad); ok {
			t.Errorf("parseNflog(%x) parsed", bad)
		}
	}
}

// TestHandleDrop: only the drop sample's prefix reaches OnDrop; a packet
// the audit log cannot describe is counted as lost.
func TestHandleDrop(t *testing.T) {
	var got []dropEvent
	b := &Backend{cfg: Config{OnDrop: func(src, dst netip.Addr, proto policy.Proto, port uint16) {
		got = append(got, dropEvent{src, dst, proto, port})
	}}}
	pkt := ipv4(6, "198.51.100.10", "192.0.2.4", ports(443))
	b.handleDrop(logPrefix, pkt)
	b.handleDrop("someone else ", pkt)
	b.handleDrop(logPrefix, pkt[:10])
	want := dropEvent{netip.MustParseAddr("198.51.100.10"), netip.MustParseAddr("192.0.2.4"), policy.TCP, 443}
	if len(got) != 1 || got[0] != want {
		t.Errorf("OnDrop got %v, want only %v", got, want)
	}
	if s := b.Stats(); s.DropSamples != 1 || s.DropSamplesLost != 1 {
		t.Errorf("Stats = %+v, want 1 sample and 1 lost", s)
	}
}

type dropEvent struct {
	src, dst netip.Addr
	proto    policy.Proto
	port     uint16
}

// TestDropSample: a connection attempt default deny drops reaches OnDrop
// with its source, destination and port; so does one audit mode lets
// through.
func TestDropSample(t *testing.T) {
	for _, mode := range []string{"enforce", "audit"} {
		t.Run(mode, func(t *testing.T) {
			n := newForwardNet(t)
			drops := make(chan dropEvent, 64)
			onDrop := func(src, dst netip.Addr, proto policy.Proto, port uint16) {
				select {
				case drops <- dropEvent{src, dst, proto, port}:
				default:
				}
			}
			b := startBackend(t, n.gw, Config{Hook: policy.HookForward, OnDrop: onDrop}, mustParse(t, override(forwardPolicy, "mode: "+mode)))
			if b.nflog == nil {
				t.Fatal("the nflog group was not bound (see the log)")
			}
			publish(t, b, "bank-api", "payments", srvA, time.Minute)

			reachable(n.client, srcPayments, srvA, "443", true) // allowed: no sample
			reachable(n.client, srcPayments, srvC, "8080", mode == "audit")
			udpAsk(t, n.client, srcPay6, "[2001:db8:2::3]:5000")

			want := []dropEvent{
				{netip.MustParseAddr(srcPayments), netip.MustParseAddr(srvC), policy.TCP, 8080},
				{netip.MustParseAddr(srcPay6), netip.MustParseAddr("2001:db8:2::3"), policy.UDP, 5000},
			}
			got := map[dropEvent]bool{}
			deadline := time.After(5 * time.Second)
			for len(got) < len(want) {
				select {
				case d := <-drops:
					if d.dst == netip.MustParseAddr(srvA) {
						t.Errorf("allowed connection sampled as a drop: %+v", d)
					}
					got[d] = true
				case <-deadline:
					t.Fatalf("samples after 5s: %v; want %v", got, want)
				}
			}
			for _, w := range want {
				if !got[w] {
					t.Errorf("no sample %+v; got %v", w, got)
				}
			}
			if s := b.Stats(); s.DropSamples < 2 {
				t.Errorf("Stats().DropSamples = %d, want at least 2", s.DropSamples)
			}
		})
	}
}

// TestDropSampleGroupBusy: a group another socket holds costs the samples,
// not the backend.
func TestDropSampleGroupBusy(t *testing.T) {
	n := newForwardNet(t)
	c, err := openNflog(n.gw.Fd(), DefaultLogGroup)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b := startBackend(t, n.gw, Config{Hook: policy.HookForward, OnDrop: func(netip.Addr, netip.Addr, policy.Proto, uint16) {}}, mustParse(t, forwardPolicy))
	if b.nflog != nil {
		t.Error("bound a group another socket holds")
	}
	publish(t, b, "bank-api", "payments", srvA, time.Minute)
}
