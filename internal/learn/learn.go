// Package learn carries addresses the DNS firewall learned for allowed names
// to whatever enforces them: the in-memory store (backend none) or the
// nftables backend.
package learn

import (
	"context"
	"net/netip"
	"time"

	"github.com/fqdngate/fqdngate/internal/dnsname"
)

// Entry is one learned address: clients in Group may reach Addr on the
// ports of Rule until Expires. Group is empty for rules without from, whose
// addresses are open to every source.
type Entry struct {
	Name    dnsname.Name
	Rule    string
	Group   string
	Addr    netip.Addr
	Expires time.Time
	// DNSSEC is the DNSSEC verdict of the answer that taught the entry
	// (secure or insecure), when the DNS firewall validates answers
	// (dns.dnssec: validate); empty when it does not. Publishers that keep
	// it list the verdict of the answer that added the entry.
	DNSSEC string
}

// Publisher receives learned addresses. Publish must not return before the
// addresses are enforceable (in the kernel, for the nftables backend): the
// DNS firewall releases an answer only after Publish returned nil. A batch
// may mix names, rules and groups: a client's answer is one batch for its
// rule and group; a refresh (rules with refresh, re-resolved with no
// client) is one batch with an entry per address and per source group of
// the rule. Addresses of rules with tls.verify arrive only after they
// passed verification, when the firewall has a verifier. Publish must not
// keep batch once it returns: the caller reuses it.
type Publisher interface {
	Publish(ctx context.Context, batch []Entry) error
}
