// Package admin serves fqdngate's operator endpoint: health, readiness,
// Prometheus metrics, the loaded policy, explanations and learned addresses.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/fqdngate/fqdngate/internal/explain"
	"github.com/fqdngate/fqdngate/internal/learn"
	"github.com/fqdngate/fqdngate/internal/policy"
)

// Config wires the endpoint to the daemon. Policy is required.
type Config struct {
	// Policy returns the policy in force.
	Policy func() *policy.Policy
	// Generation counts successful policy loads; 1 is the first.
	Generation func() uint64
	// Ready returns nil when every configured listener is serving and the
	// policy is loaded, or an error naming what is not. If nil, always ready.
	Ready func() error
	// Learned lists learned addresses. If nil, /v1/learned is empty.
	Learned func() []learn.Entry
	// Gatherer provides /metrics. If nil, /metrics is 404.
	Gatherer prometheus.Gatherer
	// RestartPending lists the settings of the policy in force that wait
	// for a restart. If nil, /v1/policy lists none.
	RestartPending func() []Pending
}

// Pending is a setting the policy changed that only takes effect when
// fqdngate restarts: InForce is what fqdngate still uses, Policy what the
// policy asks for. Part, if not empty, says which part of the setting
// waits, when the rest of it applied.
type Pending struct {
	Key     string `json:"key"`
	Part    string `json:"part,omitempty"`
	InForce string `json:"in_force"`
	Policy  string `json:"policy"`
}

// Handler returns the endpoint's routes.
func Handler(c Config) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if c.Ready != nil {
			if err := c.Ready(); err != nil {
				w.WriteHeader(http.StatusServiceUnavailable)
				_, _ = w.Write([]byte("not ready: " + err.Error() + "\n"))
				return
			}
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	if c.Gatherer != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(c.Gatherer, promhttp.HandlerOpts{}))
	}
	mux.HandleFunc("GET /v1/policy", func(w http.ResponseWriter, r *http.Request) {
		var gen uint64
		if c.Generation != nil {
			gen = c.Generation()
		}
		s := Summarize(c.Policy(), gen)
		if c.RestartPending != nil {
			if pending := c.RestartPending(); pending != nil {
				s.RestartPending = pending
			}
		}
		writeJSON(w, http.StatusOK, s)
	})
	mux.HandleFunc("GET /v1/explain", func(w http.ResponseWriter, r *http.Request) {
		from, to := r.URL.Query().Get("from"), r.URL.Query().Get("to")
		if from == "" || to == "" {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "give both from (an IP) and to (name:port or ip:port), e.g. /v1/explain?from=10.1.0.7&to=api.bank.example:443"})
			return
		}
		res, err := explain.Explain(c.Policy(), from, to)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, res)
	})
	mux.HandleFunc("GET /v1/learned", func(w http.ResponseWriter, r *http.Request) {
		out := []learnedJSON{}
		if c.Learned != nil {
			now := time.Now()
			for _, e := range c.Learned() {
				out = append(out, learnedJSON{
					Name: string(e.Name), Address: e.Addr, Rule: e.Rule, Group: e.Group,
					Expires: e.Expires.UTC().Format(time.RFC3339), ExpiresIn: e.Expires.Sub(now).Round(time.Second).String(),
				})
			}
			sort.Slice(out, func(i, j int) bool {
				if out[i].Name != out[j].Name {
					return out[i].Name < out[j].Name
				}
				return out[i].Address.Less(out[j].Address)
			})
		}
		writeJSON(w, http.StatusOK, out)
	})
	return mux
}

type learnedJSON struct {
	Name      string     `json:"name"`
	Address   netip.Addr `json:"address"`
	Rule      string     `json:"rule"`
	Group     string     `json:"group"`
	Expires   string     `json:"expires"`
	ExpiresIn string     `json:"expires_in"`
}

// Summary is the loaded policy as /v1/policy shows it.
type Summary struct {
	File       string              `json:"file"`
	Generation uint64              `json:"generation"`
	Mode       string              `json:"mode"`
	Listen     map[string]string   `json:"listen"`
	Backend    string              `json:"firewall_backend"`
	Upstreams  []string            `json:"upstreams"`
	Sources    map[string][]string `json:"sources"`
	Rules      []RuleSummary       `json:"rules"`
	// RestartPending lists the settings that wait for a restart; empty
	// when every setting of the policy is in force.
	RestartPending []Pending `json:"restart_pending"`
}

// RuleSummary is one rule in a Summary.
type RuleSummary struct {
	Name    string   `json:"name"`
	From    []string `json:"from"` // empty: every source
	To      []string `json:"to"`
	Ports   []string `json:"ports"`
	Refresh string   `json:"refresh,omitempty"`
	Verify  bool     `json:"tls_verify,omitempty"`
}

// Summarize describes p; generation is reported as given.
func Summarize(p *policy.Policy, generation uint64) Summary {
	s := Summary{
		File: p.File, Generation: generation, Mode: p.Mode.String(),
		Listen:  map[string]string{"dns": p.Listen.DNS, "proxy": p.Listen.Proxy, "transparent": p.Listen.Transparent, "admin": p.Listen.Admin},
		Backend: p.Firewall.Backend.String(),
		Sources: map[string][]string{},
		Rules:   []RuleSummary{},

		RestartPending: []Pending{},
	}
	for _, u := range p.DNS.Upstreams {
		s.Upstreams = append(s.Upstreams, u.String())
	}
	for g, pfx := range p.Sources {
		for _, x := range pfx {
			s.Sources[g] = append(s.Sources[g], x.String())
		}
	}
	for _, r := range p.Rules {
		rs := RuleSummary{Name: r.Name, From: r.From, To: []string{}, Verify: r.TLS != nil && r.TLS.Verify}
		if rs.From == nil {
			rs.From = []string{}
		}
		for _, n := range r.Names {
			rs.To = append(rs.To, n.Raw)
		}
		for _, x := range r.Prefixes {
			rs.To = append(rs.To, x.String())
		}
		for _, pr := range r.Ports {
			rs.Ports = append(rs.Ports, FormatPorts(pr))
		}
		if r.Refresh > 0 {
			rs.Refresh = r.Refresh.String()
		}
		s.Rules = append(s.Rules, rs)
	}
	return s
}

// FormatPorts writes a port range the way the policy spells it.
func FormatPorts(pr policy.PortRange) string {
	var b strings.Builder
	b.WriteString(itoa(pr.Lo))
	if pr.Hi != pr.Lo {
		b.WriteByte('-')
		b.WriteString(itoa(pr.Hi))
	}
	b.WriteByte('/')
	b.WriteString(pr.Proto.String())
	return b.String()
}

func itoa(v uint16) string { return strconv.Itoa(int(v)) }

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// Serve serves h on ln until ctx is done, then shuts down gracefully.
func Serve(ctx context.Context, ln net.Listener, h http.Handler) error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	}
}
