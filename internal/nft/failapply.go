package nft

import "github.com/google/nftables"

// FailNextApply makes the next Apply send its transaction with one more
// message that the kernel rejects (deleting a set that does not exist), so
// the kernel aborts the whole transaction as it would on any real failure,
// and Apply returns its error. It exists for the tests of callers that must
// survive a failed Apply (the daemon's reload); nothing else calls it.
func (b *Backend) FailNextApply() {
	b.nlMu.Lock()
	defer b.nlMu.Unlock()
	b.breakApply = func(c *nftables.Conn) {
		c.DelSet(&nftables.Set{Table: b.table, Name: "fqdngate-no-such-set"})
		b.breakApply = nil // Apply holds nlMu
	}
}
