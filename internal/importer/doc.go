// Package importer translates other tools' FQDN egress policies (Cilium's
// toFQDNs, Calico's domains, the NetworkPolicy API's domainNames) into an
// fqdngate policy fragment, and says, with positions, everything it could
// not translate.
//
// The translation never widens what the input allows: a part it cannot
// express (an L7 rule, a negated match, a selector form it does not know)
// drops the rule or object it belongs to, reported, rather than being
// ignored; a part that only adds (another destination kind beside the
// names) is reported and left out.
package importer
