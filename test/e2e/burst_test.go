package e2e

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
)

// burstAddr is the address the authority gives n<i>.burst.example.com:
// every name a different one, so every answer makes fqdngate program a
// new element. Even i get an IPv4 address, odd i an IPv6 one.
func burstAddr(i int) netip.Addr {
	if i%2 == 1 {
		return netip.MustParseAddr(fmt.Sprintf("2001:db8:100::2:%x", i))
	}
	// 508 addresses: 198.51.100.1-254, then 203.0.113.1-254.
	j := i / 2
	if j < 254 {
		return netip.AddrFrom4([4]byte{198, 51, 100, byte(1 + j)})
	}
	return netip.AddrFrom4([4]byte{203, 0, 113, byte(1 + j - 254)})
}

// TestConnectImmediatelyAfterAnswer: a client connects the moment its
// answer arrives, 1,000 times, each time to an address fqdngate has never
// seen; every connection must get through, since the address is in the
// kernel before the answer is released.
func TestConnectImmediatelyAfterAnswer(t *testing.T) {
	const (
		cycles  = 1000
		workers = 4
	)
	// 1,000 new names under one wildcard in seconds is what
	// dns.wildcard_budget exists to refuse; this test is about timing.
	f := startForwardWith(t, 2*time.Second, `  - name: burst
    from: [a]
    to: ["*.burst.example.com"]
  - name: b-only
    from: [b]
    to: [b.example.com]
`, func(s *policySettings) { s.dns = "  wildcard_budget: 0\n" })
	f.net.inet.auth.SetDynamic(func(name string, qtype uint16) []dns.RR {
		label, ok := strings.CutSuffix(name, ".burst.example.com")
		i, err := strconv.Atoi(strings.TrimPrefix(label, "n"))
		if !ok || err != nil || i < 0 || i >= cycles {
			return nil
		}
		if a := burstAddr(i); a.Is4() {
			return []dns.RR{dnstest.A(name, 60, a.String())}
		}
		return []dns.RR{dnstest.AAAA(name, 60, burstAddr(i).String())}
	})

	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		failures []string
	)
	start := time.Now()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < cycles; i += workers {
				name := fmt.Sprintf("n%d.burst.example.com", i)
				qtype := dns.TypeA
				if burstAddr(i).Is6() {
					qtype = dns.TypeAAAA
				}
				err := func() error {
					addrs, _, err := f.a.lookup(name, qtype)
					if err != nil {
						return err
					}
					if addrs[0] != burstAddr(i) {
						return fmt.Errorf("resolved %v, want %s", addrs, burstAddr(i))
					}
					return f.a.get(name, netip.AddrPortFrom(addrs[0], allowedPort), reachWait)
				}()
				if err != nil {
					mu.Lock()
					failures = append(failures, fmt.Sprintf("%s: %v", name, err))
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("%d resolve-then-connect cycles in %v", cycles, time.Since(start).Round(time.Millisecond))
	if len(failures) > 0 {
		t.Errorf("%d of %d cycles failed, want 0; the first ones:\n%s\n%s", len(failures), cycles,
			strings.Join(failures[:min(10, len(failures))], "\n"), f.gate.logs())
	}
	// The other group got none of it.
	mustDrop(t, f.b, netip.AddrPortFrom(burstAddr(0), allowedPort))
	mustDrop(t, f.b, netip.AddrPortFrom(burstAddr(1), allowedPort))
}
