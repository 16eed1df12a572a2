package proxy

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fqdngate/fqdngate/internal/policy"
)

// metrics are the proxy's Prometheus series. They live on the Proxy, not in
// globals, so tests and reloads never collide on registration.
type metrics struct {
	conns         *prometheus.CounterVec // listener, action, rule
	refusals      *prometheus.CounterVec // reason
	active        prometheus.Gauge
	bytes         *prometheus.CounterVec // direction
	bytesUp       prometheus.Counter     // bytes, direction up
	bytesDown     prometheus.Counter     // bytes, direction down
	dialSeconds   prometheus.Histogram
	verifyFailure prometheus.Counter
	outside       *prometheus.CounterVec // listener
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		conns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fqdngate_proxy_connections_total",
			Help: "Proxied connections (requests, for forwarded HTTP) by listener, final action and deciding rule.",
		}, []string{"listener", "action", "rule"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fqdngate_proxy_refusals_total",
			Help: "Connections the proxy refused or could not complete, by reason (policy, private, self, spoofed, no_sni, tls_version, verify, plain_http, resolve, dial, dial_timeout, busy, bad_request, auth, no_policy, orig_dst, protocol).",
		}, []string{"reason"}),
		active: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "fqdngate_proxy_active_tunnels",
			Help: "Tunnels currently carrying traffic.",
		}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fqdngate_proxy_bytes_total",
			Help: "Bytes carried, by direction (up: client to upstream).",
		}, []string{"direction"}),
		dialSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "fqdngate_proxy_dial_seconds",
			Help:    "Time to connect upstream, Happy Eyeballs included.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 15),
		}),
		verifyFailure: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fqdngate_proxy_verify_failures_total",
			Help: "Upstream certificate verifications that failed.",
		}),
	}
	m.bytesUp, m.bytesDown = m.bytes.WithLabelValues("up"), m.bytes.WithLabelValues("down")
	m.outside = newOutsideCounter()
	if reg == nil {
		return m, nil
	}
	if err := reg.Register(m.outside); err != nil {
		return nil, err
	}
	for _, c := range []prometheus.Collector{m.conns, m.refusals, m.active, m.bytes, m.dialSeconds, m.verifyFailure} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return nil, errors.New("proxy metrics are already registered; give each Proxy its own registry")
			}
			return nil, err
		}
	}
	return m, nil
}

func (m *metrics) connection(listener string, d policy.Decision, r Refusal) {
	m.conns.WithLabelValues(listener, d.Action.String(), d.RuleName()).Inc()
	if r != NotRefused {
		m.refusals.WithLabelValues(r.Label()).Inc()
	}
}

func (m *metrics) dialled(d time.Duration) { m.dialSeconds.Observe(d.Seconds()) }

func (m *metrics) carried(up bool, n int64) {
	if n <= 0 {
		return
	}
	if up {
		m.bytesUp.Add(float64(n))
	} else {
		m.bytesDown.Add(float64(n))
	}
}
