// Package history keeps a durable per-day aggregate of decisions: one row
// per UTC day and (source group, source address, component, name, port,
// record type, action, rule, reason), with hits, first and last seen, and
// bounded sets of the answers or dialled addresses, SNI names and
// certificate-check results.
//
// The audit path hands each decision to a Recorder (audit.Sink) through a
// bounded channel that never blocks: when it is full the decision is
// dropped from the history (never from enforcement or the audit log) and
// counted. The Recorder's one goroutine aggregates in memory and writes
// one SQLite transaction a minute (Sync writes at once, for readers). The store bounds itself (retention in
// days, max_size by dropping the oldest days), moves a corrupt file aside
// and starts a new one, and logs and counts a full disk; none of it stops
// a decision.
//
// SQLite (modernc.org/sqlite, pure Go: the binary stays static) rather
// than bbolt, because everything that reads the history (fqdngate
// history, suggest, the admin API) asks grouped questions (hits and
// distinct sources per group and name since a day) that are one SQL
// GROUP BY, where a key-value store would need each reader to scan and
// aggregate by hand. SQLite's file locking lets two processes share a
// file: a second writer waits (busy timeout) instead of corrupting it.
package history
