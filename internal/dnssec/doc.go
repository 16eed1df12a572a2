// Package dnssec decides whether a DNS answer is secure, insecure, bogus or
// indeterminate, by following the chain of trust from a trust anchor down
// (RFC 4033–4035, RFC 5155).
//
// The cryptography and the record handling are github.com/miekg/dns's
// (RRSIG.Verify, DNSKEY.ToDS, NSEC3 hashing); this package holds only the
// chain logic: which keys may sign what, which proofs of non-existence count,
// and which of the four verdicts an answer earns.
//
// A Validator fetches the DS and DNSKEY records it needs through an
// Exchanger (the resolver), with DO and CD set so that the upstream hands
// over what it has, good or bad, for the Validator to judge. Validated zone
// keys and zone cuts are cached for their TTL, bounded, with concurrent
// misses for one name sharing one fetch.
//
// Every RRset of an answer's answer section is validated in its own zone
// (a CNAME chain crosses zones); the authority section is used only for
// NSEC/NSEC3 proofs and the additional section is ignored. A caller that
// acts on an answer must act only on its answer section.
package dnssec
