package daemon

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/fqdngate/fqdngate/internal/audit"
	"github.com/fqdngate/fqdngate/internal/policy"
)

// metrics are the daemon's own series; components register theirs on the
// same registry.
type metrics struct {
	decisions  *prometheus.CounterVec
	reloads    *prometheus.CounterVec
	generation prometheus.Gauge
	rules      prometheus.Gauge
}

func newMetrics(reg *prometheus.Registry) *metrics {
	m := &metrics{
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fqdngate_decisions_total",
			Help: "Policy decisions by component (dns, proxy, firewall), action (allow, deny, would-deny, fail: could not be carried out, not refused) and deciding rule.",
		}, []string{"component", "action", "rule"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fqdngate_policy_reloads_total",
			Help: "Policy reload attempts by result (success, failure). A failure keeps the previous policy in force.",
		}, []string{"result"}),
		generation: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "fqdngate_policy_generation",
			Help: "Number of policies loaded successfully since start; 1 is the first.",
		}),
		rules: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "fqdngate_policy_rules",
			Help: "Rules in the policy in force.",
		}),
	}
	reg.MustRegister(m.decisions, m.reloads, m.generation, m.rules,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.reloads.WithLabelValues("success")
	m.reloads.WithLabelValues("failure")
	return m
}

// CountDecision implements audit.Counter.
func (m *metrics) CountDecision(c audit.Component, a policy.Action, rule string) {
	m.decisions.WithLabelValues(c.String(), a.String(), rule).Inc()
}
