package history

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	dropped     *prometheus.CounterVec
	errors      *prometheus.CounterVec
	corrupt     prometheus.Counter
	flushes     prometheus.Counter
	rowsWritten prometheus.Counter
	size        prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fqdngate_history_dropped_total",
			Help: "Decisions left out of the decision history (never out of enforcement or the audit log), by why: buffer_full (the writer is behind), rows_full (writes failing or waiting for a lock), max_size, disk_full, corrupt.",
		}, []string{"reason"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fqdngate_history_write_errors_total",
			Help: "Failed writes to the decision history, by kind: disk_full, corrupt, max_size, other.",
		}, []string{"kind"}),
		corrupt: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fqdngate_history_corrupt_total",
			Help: "Corrupt history files moved aside (file.corrupt-<time>) and replaced by a new one.",
		}),
		flushes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fqdngate_history_flushes_total",
			Help: "Transactions written to the decision history.",
		}),
		rowsWritten: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fqdngate_history_rows_written_total",
			Help: "Aggregated rows written (inserted or added to) in the decision history.",
		}),
		size: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "fqdngate_history_size_bytes",
			Help: "Bytes the decision history's rows use, held under history.max_size.",
		}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.dropped, m.errors, m.corrupt, m.flushes, m.rowsWritten, m.size} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}
