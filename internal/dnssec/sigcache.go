package dnssec

import (
	"crypto/sha256"
	"sync"

	"github.com/miekg/dns"
)

// sigCache remembers signatures that verified, so the same RRset, RRSIG
// and key (an NSEC3 proof shared by many names, an answer asked again) cost
// a hash instead of a public-key operation. The key is a SHA-256 over
// everything RRSIG.Verify reads, in wire form with the TTLs zeroed (Verify
// uses the RRSIG's original TTL, never the received one): a hit means the
// very same inputs. Only successes are kept, and the validity window is
// still checked on every use before the cache is asked. Bounded: when
// full, it starts over.
type sigCache struct {
	max int
	mu  sync.Mutex // guards following
	m   map[[32]byte]struct{}
}

func newSigCache(max int) *sigCache {
	return &sigCache{max: max, m: make(map[[32]byte]struct{})}
}

// sum returns the cache key, ok false when a record does not pack.
func sigKey(k *dns.DNSKEY, s *dns.RRSIG, rrs []dns.RR) ([32]byte, bool) {
	h := sha256.New()
	buf := make([]byte, 0, 512)
	put := func(r dns.RR) bool {
		c := dns.Copy(r)
		c.Header().Ttl = 0
		b := buf[:cap(buf)]
		n, err := dns.PackRR(c, b, 0, nil, false)
		if err != nil {
			return false
		}
		h.Write([]byte{byte(n >> 8), byte(n)})
		h.Write(b[:n])
		return true
	}
	if !put(k) || !put(s) {
		return [32]byte{}, false
	}
	for _, r := range rrs {
		if !put(r) {
			return [32]byte{}, false
		}
	}
	var out [32]byte
	h.Sum(out[:0])
	return out, true
}

func (c *sigCache) has(key [32]byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.m[key]
	return ok
}

func (c *sigCache) add(key [32]byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= c.max {
		clear(c.m)
	}
	c.m[key] = struct{}{}
}

// verify is RRSIG.Verify through the cache.
func (c *sigCache) verify(s *dns.RRSIG, k *dns.DNSKEY, rrs []dns.RR) error {
	key, ok := sigKey(k, s, rrs)
	if ok && c.has(key) {
		return nil
	}
	if err := s.Verify(k, rrs); err != nil {
		return err
	}
	if ok {
		c.add(key)
	}
	return nil
}
