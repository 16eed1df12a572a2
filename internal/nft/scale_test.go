package nft

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/fqdngate/fqdngate/internal/dnsname"
	"github.com/fqdngate/fqdngate/internal/learn"
	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/testutil/netns"
)

// scaleAddr is the i-th learned address of TestScale: 200 IPv4 addresses
// in 192.0.2.0/24, the rest IPv6 in 2001:db8:2::/64, both on the link
// between the gateway and the internet namespace.
func scaleAddr(i int) netip.Addr {
	if i < 200 {
		return netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + i)})
	}
	return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 2, 11: 1, 12: byte(i >> 24), 13: byte(i >> 16), 14: byte(i >> 8), 15: byte(i)})
}

// kernelHolds asks the kernel, through netlink, whether each set holds
// its address: one GETSETELEM request per element (a get, not a dump: a
// dump of a set that was just filled can miss elements while the kernel
// resizes the set's hash table, and walks the set once per message). It
// returns the number held; an expired element is not.
func kernelHolds(t testing.TB, ns *netns.NS, elems func(yield func(set string, a netip.Addr) bool)) (held, asked int) {
	t.Helper()
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: ns.Fd()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for set, a := range elems {
		ae := netlink.NewAttributeEncoder()
		ae.String(unix.NFTA_SET_ELEM_LIST_TABLE, "fqdngate")
		ae.String(unix.NFTA_SET_ELEM_LIST_SET, set)
		ae.Nested(unix.NFTA_SET_ELEM_LIST_ELEMENTS, func(ae *netlink.AttributeEncoder) error {
			ae.Nested(unix.NFTA_LIST_ELEM, func(ae *netlink.AttributeEncoder) error {
				ae.Nested(unix.NFTA_SET_ELEM_KEY, func(ae *netlink.AttributeEncoder) error {
					ae.Bytes(unix.NFTA_DATA_VALUE, a.AsSlice())
					return nil
				})
				return nil
			})
			return nil
		})
		attrs, err := ae.Encode()
		if err != nil {
			t.Fatal(err)
		}
		msg := netlink.Message{
			Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETSETELEM), Flags: netlink.Request},
			Data:   append([]byte{unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0}, attrs...),
		}
		asked++
		_, err = c.Execute(msg)
		switch {
		case err == nil:
			held++
		case errors.Is(err, unix.ENOENT):
		default:
			t.Fatalf("asking for %s in %s: %v", a, set, err)
		}
	}
	return held, asked
}

// TestScale programs 100,000 learned addresses (IPv4 and IPv6, 10,000
// names, two rules with a source group each) through the real kernel:
// every one is in its set, as netlink lists it; a sample is reached by
// real connections from its group and not from the other; the tenth
// that expire soon are gone from the kernel after their expiry, and the
// rest stay.
func TestScale(t *testing.T) {
	const (
		total   = 100_000
		perName = 10
		short   = 10 // every short-th address expires soon
	)
	n := newForwardNet(t)
	p := mustParse(t, forwardPolicy)
	b := startBackend(t, n.gw, Config{Hook: policy.HookForward}, p)

	// Even addresses are bank-api's (group payments), odd ones web's
	// (group others).
	ruleOf := func(i int) (rule, group, src string) {
		if i%2 == 0 {
			return "bank-api", "payments", srcPayments
		}
		return "web", "others", srcOthers
	}
	setOf := func(i int) string {
		rule, group, _ := ruleOf(i)
		fam := "6"
		if scaleAddr(i).Is4() {
			fam = "4"
		}
		return "learn" + fam + "." + rule + "." + group
	}
	// Long enough for publishing, asking for the short-lived ones and the
	// sample under the race detector on a loaded machine (about 10 s
	// here), short for a test.
	shortTTL := 20 * time.Second
	expShort, expLong := time.Now().Add(shortTTL), time.Now().Add(time.Hour)

	// Real connections to a sample: reachable from the address's group,
	// not from the other; an address never learned reaches no one.
	sample := []int{0, 1, 2, 3, 10, 11, 199, 200, 201, 210, 50_001, 77_778, 99_990, 99_999}
	var cases []reach
	for _, i := range sample {
		a := scaleAddr(i)
		bits := 24
		if a.Is6() {
			bits = 64
		}
		n.inet.Addr("i0", netip.PrefixFrom(a, bits).String())
		_, _, src := ruleOf(i)
		other := srcOthers
		if src == srcOthers {
			other = srcPayments
		}
		if a.Is6() {
			// The policy has one IPv6 source, of payments.
			if src != srcPayments {
				continue
			}
			src, other = srcPay6, ""
		}
		cases = append(cases, reach{src, a.String(), "443", true})
		if other != "" {
			cases = append(cases, reach{other, a.String(), "443", false})
		}
	}
	never := netip.MustParseAddr("2001:db8:2::ff:1")
	n.inet.Addr("i0", netip.PrefixFrom(never, 64).String())
	cases = append(cases, reach{srcPay6, never.String(), "443", false}, reach{srcPayments, "192.0.2.250", "443", false})
	n.inet.Addr("i0", "192.0.2.250/24")

	// A name's addresses are one answer: one Publish, from eight clients
	// at once as the DNS firewall would.
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			batch := make([]learn.Entry, 0, perName)
			for name := w; name < total/perName; name += 8 {
				batch = batch[:0]
				for i := name * perName; i < (name+1)*perName; i++ {
					rule, group, _ := ruleOf(i)
					exp := expLong
					if i%short == 0 {
						exp = expShort
					}
					batch = append(batch, learn.Entry{Name: dnsname.Name(fmt.Sprintf("n%d.example", name)), Rule: rule, Group: group, Addr: scaleAddr(i), Expires: exp})
				}
				if err := b.Publish(context.Background(), batch); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("Publish: %v", err)
	}
	t.Logf("published %d addresses in %v", total, time.Since(start).Round(time.Millisecond))

	// The kernel is asked for every address: held if and only if it has
	// not expired. The short-lived ones, and the sample of connections,
	// first: they are in a hurry (asking for the other 90,000 takes 20 s
	// under the race detector here).
	checkShort := func(when string, want bool) {
		t.Helper()
		held, asked := kernelHolds(t, n.gw, func(yield func(string, netip.Addr) bool) {
			for i := 0; i < total; i += short {
				if !yield(setOf(i), scaleAddr(i)) {
					return
				}
			}
		})
		if want && held != asked {
			t.Fatalf("%s: the kernel holds %d of the %d short-lived addresses", when, held, asked)
		}
		if !want && held != 0 {
			t.Fatalf("%s: the kernel still holds %d of the %d expired addresses", when, held, asked)
		}
	}
	checkLong := func(when string) {
		t.Helper()
		t0 := time.Now()
		held, asked := kernelHolds(t, n.gw, func(yield func(string, netip.Addr) bool) {
			for i := range total {
				if i%short != 0 && !yield(setOf(i), scaleAddr(i)) {
					return
				}
			}
		})
		if held != asked {
			t.Fatalf("%s: the kernel holds %d of the %d long-lived addresses", when, held, asked)
		}
		t.Logf("%s: asked the kernel for %d elements in %v", when, asked, time.Since(t0).Round(time.Millisecond))
	}
	// countAll counts the backend's listing (the admin API's view), which
	// names every address.
	countAll := func() int {
		listed := 0
		for e := range b.All("") {
			if e.Name == "" || !strings.HasPrefix(string(e.Name), "n") {
				t.Fatalf("All lists %+v without its name", e)
			}
			listed++
		}
		return listed
	}

	checkShort("after publishing", true)
	if got := countAll(); got != total {
		t.Errorf("All lists %d entries, want %d", got, total)
	}
	var ofName []string
	for e := range b.All("n4242.example") {
		ofName = append(ofName, e.Addr.String())
	}
	if len(ofName) != perName || !slices.Contains(ofName, scaleAddr(42420).String()) {
		t.Errorf(`All("n4242.example") lists %q, want the %d addresses from %s`, ofName, perName, scaleAddr(42420))
	}
	checkReach(t, n.client, cases)
	if time.Now().After(expShort) {
		t.Fatalf("checking the short-lived addresses took until after their expiry (%v after publishing): the machine is too slow for this test's timing", time.Since(start))
	}
	checkLong("after publishing")

	// Expiry: the kernel drops the short-lived tenth by itself.
	time.Sleep(time.Until(expShort.Add(refreshSlack + time.Second)))
	checkShort("after the short expiry", false)
	checkLong("after the short expiry")
	var after []reach
	for _, i := range sample {
		a := scaleAddr(i)
		_, _, src := ruleOf(i)
		if a.Is6() {
			if src != srcPayments {
				continue
			}
			src = srcPay6
		}
		after = append(after, reach{src, a.String(), "443", i%short != 0})
	}
	checkReach(t, n.client, after)
	if got, want := countAll(), total-total/short; got != want {
		t.Errorf("after the short expiry All lists %d entries, want %d", got, want)
	}
}
