package learn

// Dropped counts the entries removed before their expiry, to respect a
// bound (dnsfw.DropCounter). While it stands still, every entry published
// is held at least until the expiry it was published with, which lets the
// DNS firewall answer from its cache without publishing again.
func (s *Store) Dropped() uint64 { return s.evicted.Load() }
