package nft

import (
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
)

// Listeners whose packets from outside the inside the listeners chain
// drops, by the name Drops reports them under.
var guardedListeners = [...]string{"dns", "proxy", "transparent"}

// outsideComment is the comment of the listeners chain's rules that drop
// packets for listener from outside; Drops finds them by it.
func outsideComment(listener string) string { return "listen." + listener + " from outside" }

// Drops are the packets the table dropped before the policy saw them,
// counted by the kernel since the backend started: forged sources (the
// reverse_path chain; in audit mode, what it would have dropped) and
// packets for fqdngate's listeners from outside the inside (the listeners
// chain).
type Drops struct {
	ReversePath uint64
	// Outside holds the listeners chain's drops by listener: "dns",
	// "proxy" and "transparent", each present.
	Outside map[string]uint64
}

// drops are Drops as the backend adds them up.
type drops struct {
	reversePath uint64
	outside     [len(guardedListeners)]uint64 // indexed like guardedListeners
}

func (d drops) plus(o drops) drops {
	d.reversePath += o.reversePath
	for i := range d.outside {
		d.outside[i] += o.outside[i]
	}
	return d
}

func (d drops) export() Drops {
	out := Drops{ReversePath: d.reversePath, Outside: make(map[string]uint64, len(guardedListeners))}
	for i, l := range guardedListeners {
		out.Outside[l] = d.outside[i]
	}
	return out
}

// dropCounts is what Drops keeps, under nlMu: each count is base plus
// what the kernel's rules hold now. A commit replaces the rules, and their
// counters start again at zero, so it adds what they held to base (see
// commitLocked); last is what Drops last reported, below which no count
// falls even when rules went without a commit of ours (someone deleted the
// table, and the watcher put it back).
type dropCounts struct {
	base, last drops
}

// Drops returns the drops since New: what the kernel's counters hold now,
// plus what the rules that commits replaced had counted. The counts only
// grow. When the table cannot be read, it returns the last counts and the
// error.
func (b *Backend) Drops() (Drops, error) {
	b.nlMu.Lock()
	defer b.nlMu.Unlock()
	cur, err := b.readDropsLocked(nil)
	if err != nil {
		return b.drops.last.export(), err
	}
	total := b.drops.base.plus(cur)
	last := b.drops.last
	if total.reversePath < last.reversePath {
		b.drops.base.reversePath += last.reversePath - total.reversePath
		total.reversePath = last.reversePath
	}
	for i := range total.outside {
		if total.outside[i] < last.outside[i] {
			b.drops.base.outside[i] += last.outside[i] - total.outside[i]
			total.outside[i] = last.outside[i]
		}
	}
	b.drops.last = total
	return total.export(), nil
}

// readDropsLocked reads the drop counters of the reverse_path and
// listeners chains as the kernel holds them; chains are the table's, or
// nil to list them. A chain the table lacks counts nothing.
func (b *Backend) readDropsLocked(chains []*nftables.Chain) (drops, error) {
	var d drops
	if chains == nil {
		var err error
		if chains, err = b.listChains(); err != nil {
			return d, err
		}
	}
	for _, ch := range chains {
		if ch.Name != reversePathChain && ch.Name != listenersChain {
			continue
		}
		rules, err := b.conn.GetRules(b.table, ch)
		if err != nil {
			return d, netlinkErr("reading the counters of chain "+ch.Name, err)
		}
		for _, r := range rules {
			packets, ok := counted(r.Exprs)
			if !ok {
				continue
			}
			if ch.Name == reversePathChain {
				d.reversePath += packets
				continue
			}
			comment, _ := userdata.GetString(r.UserData, ruleComment)
			for i, l := range guardedListeners {
				if comment == outsideComment(l) {
					d.outside[i] += packets
				}
			}
		}
	}
	return d, nil
}

// counted returns the packets a rule's counter holds, if it has one.
func counted(exprs []expr.Any) (uint64, bool) {
	for _, e := range exprs {
		if c, ok := e.(*expr.Counter); ok {
			return c.Packets, true
		}
	}
	return 0, false
}
