package daemon

import (
	"runtime"
	"runtime/debug"
	"time"

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
	// lastOK and lastOKTime follow Prometheus' own
	// prometheus_config_last_reload_* series: the start counts as the
	// first load.
	lastOK         prometheus.Gauge
	lastOKTime     prometheus.Gauge
	restartPending prometheus.Gauge
	reloadSeconds  prometheus.Histogram
}

func newMetrics(reg *prometheus.Registry, version, revision string) *metrics {
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
		lastOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "fqdngate_config_last_reload_successful",
			Help: "1 if the last attempt to load the policy (at start or on reload) succeeded, 0 if it failed and the previous policy stayed in force.",
		}),
		lastOKTime: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "fqdngate_config_last_reload_success_timestamp_seconds",
			Help: "When the policy in force was loaded (at start or by the last successful reload), in seconds since the Unix epoch.",
		}),
		restartPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "fqdngate_config_restart_pending",
			Help: "Settings of the policy in force that take effect only at the next restart (listed in the log and in /v1/policy); 0 when every setting is in force.",
		}),
		reloadSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "fqdngate_policy_reload_duration_seconds",
			Help:    "How long reloads took, from reading the policy file to the new policy in force or refused (took_ms in the log); the collection after it is not counted.",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
	}
	buildInfo := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "fqdngate_build_info",
		Help:        "Always 1; the labels say which fqdngate runs: version (set at build time), goversion, and the VCS revision it was built from.",
		ConstLabels: prometheus.Labels{"version": version, "goversion": runtime.Version(), "revision": revision},
	})
	buildInfo.Set(1)
	reg.MustRegister(m.decisions, m.reloads, m.generation, m.rules, m.lastOK, m.lastOKTime, m.restartPending, m.reloadSeconds, buildInfo,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.reloads.WithLabelValues("success")
	m.reloads.WithLabelValues("failure")
	return m
}

// stampedRevision is the VCS revision Go stamped into the binary, or
// "unknown" (test binaries, builds outside a checkout or with
// -buildvcs=false).
func stampedRevision() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && s.Value != "" {
				return s.Value
			}
		}
	}
	return "unknown"
}

// loaded records an attempt to load the policy; reload says whether it was
// a reload (counted in fqdngate_policy_reloads_total) or the start.
func (m *metrics) loaded(ok, reload bool, now time.Time) {
	if reload {
		result := "failure"
		if ok {
			result = "success"
		}
		m.reloads.WithLabelValues(result).Inc()
	}
	if ok {
		m.lastOK.Set(1)
		m.lastOKTime.Set(float64(now.UnixNano()) / 1e9)
	} else {
		m.lastOK.Set(0)
	}
}

// CountDecision implements audit.Counter.
func (m *metrics) CountDecision(c audit.Component, a policy.Action, rule string) {
	m.decisions.WithLabelValues(c.String(), a.String(), rule).Inc()
}
