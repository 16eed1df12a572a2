package dnsfw

import (
	"fmt"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fqdngate/fqdngate/internal/learn"
	"github.com/fqdngate/fqdngate/internal/resolver"
)

// Metrics are the DNS firewall's Prometheus series. They also implement
// resolver.Observer: pass the same Metrics to resolver.Config.Observer and
// to Config.Metrics, and upstream latency and failures are counted too.
type Metrics struct {
	reg prometheus.Registerer

	queries         *prometheus.CounterVec
	refused         *prometheus.CounterVec
	upstreamLatency *prometheus.HistogramVec
	upstreamFails   *prometheus.CounterVec
	cacheHits       prometheus.Counter
	cacheMisses     prometheus.Counter
	capHits         prometheus.Counter
	publishFailures prometheus.Counter
	verifyFailures  prometheus.Counter
	refreshes       *prometheus.CounterVec
	outside         prometheus.Counter // queries from outside the inside
	budget          *prometheus.CounterVec
	dnssec          *prometheus.CounterVec
}

// NewMetrics makes the series and registers them with reg; if reg is nil
// they are kept but not registered.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		reg: reg,
		queries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fqdngate_dns_queries_total",
			Help: "DNS queries answered, by action (allow, deny, would-deny; fail when the upstream failed, the answer could not be enforced in time, or the query was over dns.rate_limit or dns.max_inflight; none when refused as malformed), query type and response code (dropped when no response was sent).",
		}, []string{"action", "qtype", "rcode"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fqdngate_dns_refused_total",
			Help: "DNS queries refused for load: rate_limit (a client over dns.rate_limit) or busy (upstream queries at dns.max_inflight).",
		}, []string{"reason"}),
		upstreamLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "fqdngate_dns_upstream_duration_seconds",
			Help:    "Time taken by each attempt at an upstream resolver, successful or not.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"upstream"}),
		upstreamFails: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fqdngate_dns_upstream_failures_total",
			Help: "Attempts at an upstream resolver that failed: no answer in time, a network error, or SERVFAIL/REFUSED.",
		}, []string{"upstream"}),
		cacheHits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fqdngate_dns_cache_hits_total",
			Help: "Allowed DNS queries answered from the cache.",
		}),
		cacheMisses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fqdngate_dns_cache_misses_total",
			Help: "Allowed DNS queries the cache could not answer, sent upstream.",
		}),
		capHits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fqdngate_dns_learned_per_name_cap_hits_total",
			Help: "Answers with more addresses than dns.max_learned_per_name; the excess was removed from the answer and not learned.",
		}),
		publishFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fqdngate_dns_publish_failures_total",
			Help: "Answers withheld (SERVFAIL) because their addresses could not be published to the enforcement backend in time.",
		}),
		verifyFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fqdngate_dns_verify_failures_total",
			Help: "Addresses in answers for tls.verify rules that failed the certificate check; removed from the answer and not learned (kept, in audit mode).",
		}),
		refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fqdngate_dns_refresh_total",
			Help: "Re-resolutions of names of rules with refresh, by result: learned (addresses published), empty (no address to learn), failed (upstream, rebinding, verification or publishing failed).",
		}, []string{"result"}),
		dnssec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fqdngate_dns_dnssec_total",
			Help: "Upstream answers validated (dns.dnssec: validate), by verdict: secure, insecure, bogus, indeterminate. Bogus and indeterminate answers are SERVFAIL, never learned or cached.",
		}, []string{"state"}),
		budget: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fqdngate_dns_wildcard_budget_exceeded_total",
			Help: "Queries for a new name under a wildcard from a client over dns.wildcard_budget, by allowing rule: refused, never sent upstream (in audit mode, sent and logged would-deny).",
		}, []string{"rule"}),
	}
	m.outside = newOutsideCounter()
	if reg == nil {
		return m, nil
	}
	if err := reg.Register(m.outside); err != nil {
		return nil, fmt.Errorf("dnsfw: registering metrics: %w", err)
	}
	for _, c := range []prometheus.Collector{m.queries, m.refused, m.upstreamLatency, m.upstreamFails,
		m.cacheHits, m.cacheMisses, m.capHits, m.publishFailures, m.verifyFailures, m.refreshes, m.budget, m.dnssec} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("dnsfw: registering metrics: %w", err)
		}
	}
	return m, nil
}

var _ resolver.Observer = (*Metrics)(nil)

// ObserveExchange implements resolver.Observer.
func (m *Metrics) ObserveExchange(upstream string, d time.Duration, err error) {
	m.upstreamLatency.WithLabelValues(upstream).Observe(d.Seconds())
	if err != nil {
		m.upstreamFails.WithLabelValues(upstream).Inc()
	}
}

func (m *Metrics) countQuery(action string, qtype uint16, rcode int) {
	qt, ok := dns.TypeToString[qtype]
	if !ok {
		qt = "other" // bound the label's values
	}
	m.queries.WithLabelValues(action, qt, rcodeString(rcode)).Inc()
}

// watchStore exports the size of the in-memory learned set.
func (m *Metrics) watchStore(s *learn.Store) error {
	if m.reg == nil {
		return nil
	}
	learned := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "fqdngate_dns_learned",
		Help: "Learned addresses held (backend none: the in-memory store).",
	}, func() float64 { return float64(s.Len()) })
	evicted := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "fqdngate_dns_learned_evictions_total",
		Help: "Unexpired learned addresses pushed out of the in-memory store by its bounds (total and dns.max_learned_per_name).",
	}, func() float64 { t, _ := s.Evictions(); return float64(t) })
	for _, c := range []prometheus.Collector{learned, evicted} {
		if err := m.reg.Register(c); err != nil {
			return fmt.Errorf("dnsfw: registering learned-store metrics: %w", err)
		}
	}
	return nil
}
