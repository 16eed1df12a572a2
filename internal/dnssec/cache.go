package dnssec

import (
	"sync"
	"time"
)

// cache holds what the zone walk learnt about names: the validated keys of
// a secure zone, that a name is no zone cut, that a delegation is
// insecure, or that the chain is bogus there. Bounded: when full, expired
// entries go first, then arbitrary ones.
type cache struct {
	max int
	mu  sync.Mutex // guards following
	m   map[string]*node
}

func newCache(max int) *cache { return &cache{max: max, m: map[string]*node{}} }

func (c *cache) get(name string, now time.Time) *node {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.m[name]
	if n == nil || !now.Before(n.expires) {
		return nil
	}
	return n
}

func (c *cache) put(name string, n *node, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[name]; !ok && len(c.m) >= c.max {
		for k, e := range c.m {
			if !now.Before(e.expires) {
				delete(c.m, k)
			}
		}
		for k := range c.m {
			if len(c.m) < c.max {
				break
			}
			delete(c.m, k)
		}
	}
	c.m[name] = n
}

func (c *cache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}
