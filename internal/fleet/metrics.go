package fleet

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the fleet's Prometheus series.
type metrics struct {
	writes      *prometheus.CounterVec   // etcd writes, by kind
	writeTime   *prometheus.HistogramVec // etcd writes' round trips, by kind
	flushSize   prometheus.Histogram     // elements per transaction of learned elements
	acksCarried prometheus.Counter       // watermarks written with learned elements
	written     prometheus.Counter       // elements written
	coalesced   prometheus.Counter       // elements etcd held already
	holds       *prometheus.CounterVec   // Publish calls, by how their hold ended
	holdTime    prometheus.Histogram
	programd    prometheus.Counter     // elements from etcd programmed
	ignored     *prometheus.CounterVec // elements from etcd ignored, by reason
	degraded    prometheus.Gauge
	outages     prometheus.Counter
	leader      prometheus.Gauge
	live        prometheus.Gauge
	pending     prometheus.Gauge
	overflow    prometheus.Counter
	resyncs     prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fqdngate_fleet_etcd_writes_total",
			Help: "Writes this gateway made to etcd, by kind: learned (a transaction of learned elements, which may carry this gateway's watermark too), lease (a lease granted for an expiry bucket), watermark (this gateway's acknowledgement, alone), node (registering this gateway).",
		}, []string{"kind"}),
		writeTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "fqdngate_fleet_etcd_write_duration_seconds",
			Help:    "Time from sending a write to etcd to its answer, by kind: learned (a transaction of learned elements), watermark (this gateway's acknowledgement).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1},
		}, []string{"kind"}),
		flushSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "fqdngate_fleet_flush_elements",
			Help:    "Learned elements per batch (one etcd key, one transaction) this gateway wrote to etcd.",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024},
		}),
		acksCarried: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fqdngate_fleet_acks_carried_total",
			Help: "Moves of this gateway's watermark written in a transaction of learned elements, costing no etcd write of their own (those written alone count as fqdngate_fleet_etcd_writes_total{kind=\"watermark\"}).",
		}),
		written: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fqdngate_fleet_learned_written_total",
			Help: "Learned elements this gateway wrote to etcd (new, or with a later expiry).",
		}),
		coalesced: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fqdngate_fleet_learned_coalesced_total",
			Help: "Learned elements published that were not written to etcd because it held them already with the same or a later expiry.",
		}),
		holds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fqdngate_fleet_holds_total",
			Help: "Publications of learned addresses, by how their hold ended: acked (every live gateway had them), local (hold: local), degraded (etcd unreachable: held locally only), timeout_release and timeout_servfail (cluster.hold_timeout passed).",
		}, []string{"result"}),
		holdTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "fqdngate_fleet_hold_duration_seconds",
			Help:    "Time an answer waited, with hold: peers, after this gateway had programmed its addresses and before every live gateway had (or the hold ended otherwise).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1},
		}),
		programd: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fqdngate_fleet_learned_programmed_total",
			Help: "Learned elements read from etcd (written by any gateway) and programmed on this one.",
		}),
		ignored: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fqdngate_fleet_learned_ignored_total",
			Help: "Learned elements read from etcd and not programmed, by reason: malformed, unknown_rule, unknown_group, name_not_allowed, address_refused, expiry_too_far, per_name_cap, program_failed (the local publisher refused it), refused (by another check than fleet.Accept).",
		}, []string{"reason"}),
		degraded: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "fqdngate_fleet_degraded",
			Help: "1 while etcd is unreachable or without quorum: this gateway enforces what it has and holds new answers locally only.",
		}),
		outages: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fqdngate_fleet_degraded_total",
			Help: "Times this gateway lost etcd and went into degraded mode.",
		}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "fqdngate_fleet_refresh_leader",
			Help: "1 while this gateway is the elected leader that runs the refresh timers.",
		}),
		live: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "fqdngate_fleet_live_nodes",
			Help: "Other gateways this one sees alive in etcd (and waits for with hold: peers).",
		}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "fqdngate_fleet_pending",
			Help: "Learned elements waiting to be written to etcd.",
		}),
		overflow: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fqdngate_fleet_pending_overflow_total",
			Help: "Learned elements enforced locally but never written to etcd, because too many were waiting already.",
		}),
		resyncs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fqdngate_fleet_resyncs_total",
			Help: "Times this gateway (re)loaded the learned set from etcd: at start, and after each outage.",
		}),
	}
	// Label values that exist from the start, so that rates work.
	for _, k := range []string{"learned", "lease", "watermark", "node"} {
		m.writes.WithLabelValues(k)
	}
	for _, k := range []string{"learned", "watermark"} {
		m.writeTime.WithLabelValues(k)
	}
	for _, r := range []string{"acked", "local", "degraded", "timeout_release", "timeout_servfail"} {
		m.holds.WithLabelValues(r)
	}
	for _, r := range []string{ReasonMalformed, ReasonUnknownKey, ReasonUnknownRule, ReasonUnknownGroup, ReasonNameNotAllowed, ReasonAddress, ReasonExpiry, ReasonPerNameCap, ReasonProgram, ReasonRefused} {
		m.ignored.WithLabelValues(r)
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.writes, m.writeTime, m.flushSize, m.acksCarried, m.written, m.coalesced, m.holds, m.holdTime, m.programd, m.ignored, m.degraded, m.outages, m.leader, m.live, m.pending, m.overflow, m.resyncs} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("fleet: registering metrics: %w", err)
		}
	}
	return m, nil
}
