// Package admin serves fqdngate's operator endpoint: health, readiness,
// Prometheus metrics, the loaded policy, explanations, learned addresses
// and rule usage.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"iter"
	stdlog "log"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/fqdngate/fqdngate/internal/dnsname"
	"github.com/fqdngate/fqdngate/internal/explain"
	"github.com/fqdngate/fqdngate/internal/history"
	"github.com/fqdngate/fqdngate/internal/learn"
	"github.com/fqdngate/fqdngate/internal/netaddr"
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
	// Learned yields the learned addresses of a name, or all of them for
	// the empty name, in any order; /v1/learned pages through them (see
	// learn.Page), and asks for a name's when it filters by name. If nil,
	// /v1/learned is empty.
	Learned func(dnsname.Name) iter.Seq[learn.Entry]
	// Gatherer provides /metrics. If nil, /metrics is 404.
	Gatherer prometheus.Gatherer
	// RestartPending lists the settings of the policy in force that wait
	// for a restart. If nil, /v1/policy lists none.
	RestartPending func() []Pending
	// Local is this host's addresses: /v1/explain serves a source that is
	// one of them as the DNS firewall and the proxy do. If nil, only
	// loopback is this host.
	Local netaddr.Host
	// Degraded returns what works less well than configured without
	// making fqdngate unready (a fleet gateway that cannot reach etcd
	// keeps enforcing what it has), or nil. /readyz says it after
	// "ready". If nil, never degraded.
	Degraded func() error
	// Fleet returns the fleet's status for /v1/fleet (what fqdngate
	// fleet status --json prints). If nil, /v1/fleet is 404: the gateway
	// has no cluster section.
	Fleet func(context.Context) (any, error)
	// History reads the decision history for /v1/history. If nil,
	// /v1/history is 404: history is off.
	History func(context.Context, history.Filter) ([]history.Row, error)
	// Auth is what requests beyond /healthz and /readyz must bring. The
	// zero value: nothing.
	Auth Auth
	// UI serves the web console under /ui/. If nil, /ui/ is 404.
	UI http.Handler
	// Logger receives refused and rate-limited token attempts (never the
	// token). If nil, slog.Default().
	Logger *slog.Logger
	// Now is the clock of the token attempts' limit. If nil, time.Now.
	Now func() time.Time
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
		if c.Degraded != nil {
			if err := c.Degraded(); err != nil {
				_, _ = w.Write([]byte("ready; degraded: " + err.Error() + "\n"))
				return
			}
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	mux.HandleFunc("GET /v1/fleet", func(w http.ResponseWriter, r *http.Request) {
		if c.Fleet == nil {
			writeJSON(w, http.StatusNotFound, map[string]string{"error": "this gateway has no cluster section, so it is not part of a fleet"})
			return
		}
		rep, err := c.Fleet(r.Context())
		if err != nil {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, rep)
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
	mux.HandleFunc("GET /v1/rules", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, RulesOf(c.Policy()))
	})
	mux.HandleFunc("GET /v1/explain", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		from, pod, to := q.Get("from"), q.Get("pod"), q.Get("to")
		if (from == "") == (pod == "") || to == "" {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "give from (an IP) or pod (namespace/name), and to (name:port or ip:port), e.g. /v1/explain?from=10.1.0.7&to=api.bank.example:443 or /v1/explain?pod=payments/checkout-7d9f&to=api.bank.example:443"})
			return
		}
		var res explain.Result
		var err error
		if pod != "" {
			res, err = explain.ExplainPod(c.Policy(), pod, to, c.Local)
		} else {
			res, err = explain.Explain(c.Policy(), from, to, c.Local)
		}
		switch {
		case errors.Is(err, explain.ErrUnknownPod):
			writeJSON(w, http.StatusNotFound, map[string]string{"error": err.Error()})
			return
		case errors.Is(err, explain.ErrPodsNotSynced):
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
			return
		case err != nil:
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, res)
	})
	mux.HandleFunc("GET /v1/history", func(w http.ResponseWriter, r *http.Request) {
		if c.History == nil {
			writeJSON(w, http.StatusNotFound, map[string]string{"error": "the decision history is off (history.enabled: false, or its file could not be opened: see the log)"})
			return
		}
		f, err := history.ParseFilter(r.URL.Query(), time.Now())
		if err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
			return
		}
		rows, err := c.History(r.Context(), f)
		if err != nil {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"rows": rows})
	})
	mux.HandleFunc("GET /v1/learned", func(w http.ResponseWriter, r *http.Request) {
		q, err := parseLearnedQuery(r.URL.Query())
		if err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
			return
		}
		var (
			page []learn.Entry
			next learn.Cursor
		)
		if c.Learned != nil {
			page, next = learn.Page(c.Learned(q.filter.Name), q.filter, q.after, q.limit)
		}
		writeLearned(w, page, next, time.Now())
	})
	if c.UI != nil {
		mux.Handle("/ui/", c.UI)
	}
	log, now := c.Logger, c.Now
	if log == nil {
		log = slog.Default()
	}
	if now == nil {
		now = time.Now
	}
	return c.Auth.protect(mux, log, now)
}

// Summary is the loaded policy as /v1/policy shows it.
type Summary struct {
	File string `json:"file"`
	// Shared names a fleet gateway's shared policy revision in force;
	// empty for a standalone gateway.
	Shared     string              `json:"shared_policy,omitempty"`
	Generation uint64              `json:"generation"`
	Mode       string              `json:"mode"`
	Listen     map[string]string   `json:"listen"`
	Backend    string              `json:"firewall_backend"`
	Upstreams  []string            `json:"upstreams"`
	Sources    map[string][]string `json:"sources"`
	// SourceInterfaces lists the interfaces of the source groups tied to
	// some (the long form's interfaces key); other groups match on any.
	SourceInterfaces map[string][]string `json:"source_interfaces"`
	// SourcePods describes the groups that select pods (the long form's
	// kubernetes key); absent when none does.
	SourcePods map[string]PodsSummary `json:"source_pods,omitempty"`
	Inside     InsideSummary          `json:"inside"`
	Firewall   FirewallSummary        `json:"firewall"`
	DNS        DNSSummary             `json:"dns"`
	Rules      []RuleSummary          `json:"rules"`
	// Observe lists the source groups with observe_until, by name: until
	// when each observes (lets through and logs as would-deny what it
	// would deny), and whether it still does. Empty when none has it.
	Observe []policy.ObservedGroup `json:"observe"`
	// RestartPending lists the settings that wait for a restart; empty
	// when every setting of the policy is in force.
	RestartPending []Pending `json:"restart_pending"`
}

// PodsSummary is one group that selects pods: its selector, and what the
// pod snapshot in force puts in it.
type PodsSummary struct {
	Selector string `json:"selector"`
	// Synced is false until the cluster's pods were listed once: the
	// group has no members until then.
	Synced    bool `json:"synced"`
	Addresses int  `json:"addresses"`
}

// InsideSummary is who fqdngate serves (policy.Inside).
type InsideSummary struct {
	// Explicit is true when the policy's inside key gives it, false when
	// it is the source groups.
	Explicit bool `json:"explicit"`
	// Description says it in words, as explain does.
	Description string `json:"description"`
	// Parts are its ways of being inside: a source in a part's ranges
	// (any, when empty) arriving on one of its interfaces (any, when
	// empty). None: only this host is served.
	Parts []InsidePartSummary `json:"parts"`
}

// InsidePartSummary is one way of being inside.
type InsidePartSummary struct {
	Group      string   `json:"group,omitempty"` // the source group tied to interfaces it comes from, if any
	Ranges     []string `json:"ranges"`
	Interfaces []string `json:"interfaces"`
}

// FirewallSummary is the kernel enforcement's settings.
type FirewallSummary struct {
	Backend          string   `json:"backend"`
	Hook             string   `json:"hook"`
	Table            string   `json:"table"`
	ReversePath      string   `json:"reverse_path"`
	DenyWith         string   `json:"deny_with"`
	LogAllowed       string   `json:"log_allowed"`
	TransparentPorts []uint16 `json:"transparent_ports"`
}

// DNSSummary is the DNS firewall's settings that decide what it answers.
type DNSSummary struct {
	DenyWith            string `json:"deny_with"`
	InspectCNAME        bool   `json:"inspect_cname"`
	WildcardBudget      int    `json:"wildcard_budget"`
	RebindingProtection bool   `json:"rebinding_protection"`
	StripECH            bool   `json:"strip_ech"`
}

// RuleSummary is one rule in a Summary.
type RuleSummary struct {
	Name    string   `json:"name"`
	From    []string `json:"from"` // empty: every source
	To      []string `json:"to"`
	Ports   []string `json:"ports"`
	Refresh string   `json:"refresh,omitempty"`
	Verify  bool     `json:"tls_verify,omitempty"`
	// InspectTunnels is the rule's inspect_tunnels: whether the proxy
	// reads the first bytes of its CONNECT tunnels.
	InspectTunnels bool `json:"inspect_tunnels"`
}

// RulesReport is /v1/rules: every rule of the policy in force with its
// usage, in file order.
type RulesReport struct {
	File  string             `json:"file"`
	Rules []policy.RuleUsage `json:"rules"`
}

// RulesOf reports p's rules and their usage (policy.Policy.RulesUsage):
// hits count the decisions each rule allowed since this process started,
// or since the rule last changed.
func RulesOf(p *policy.Policy) RulesReport {
	return RulesReport{File: p.File, Rules: p.RulesUsage()}
}

// Summarize describes p; generation is reported as given.
func Summarize(p *policy.Policy, generation uint64) Summary {
	s := Summary{
		File: p.File, Shared: p.SharedName, Generation: generation, Mode: p.Mode.String(),
		Listen:           map[string]string{"dns": p.Listen.DNS, "proxy": p.Listen.Proxy, "transparent": p.Listen.Transparent, "admin": p.Listen.Admin},
		Backend:          p.Firewall.Backend.String(),
		Sources:          map[string][]string{},
		SourceInterfaces: map[string][]string{},
		Inside: InsideSummary{
			Explicit:    p.InsideSpec.Explicit,
			Description: p.DescribeInside(),
			Parts:       []InsidePartSummary{},
		},
		Firewall: FirewallSummary{
			Backend:          p.Firewall.Backend.String(),
			Hook:             p.Firewall.Hook.String(),
			Table:            p.Firewall.Table,
			ReversePath:      p.Firewall.ReversePath.String(),
			DenyWith:         p.Firewall.DenyWith.String(),
			LogAllowed:       p.Firewall.LogAllowed.String(),
			TransparentPorts: append([]uint16{}, p.Firewall.TransparentPorts...),
		},
		DNS: DNSSummary{
			DenyWith:            p.DNS.DenyWith.String(),
			InspectCNAME:        p.DNS.InspectCNAME,
			WildcardBudget:      p.DNS.WildcardBudget,
			RebindingProtection: p.DNS.RebindingProtection,
			StripECH:            p.DNS.StripECH,
		},
		Rules:   []RuleSummary{},
		Observe: p.Observed(p.Now()),

		RestartPending: []Pending{},
	}
	for _, u := range p.DNS.Upstreams {
		s.Upstreams = append(s.Upstreams, u.String())
	}
	for g, pfx := range p.Sources {
		s.Sources[g] = prefixStrings(pfx)
	}
	for g, ifs := range p.SourceInterfaces {
		s.SourceInterfaces[g] = append([]string{}, ifs...)
	}
	if len(p.Pods) > 0 {
		m := p.Members()
		s.SourcePods = map[string]PodsSummary{}
		for g, sel := range p.Pods {
			s.SourcePods[g] = PodsSummary{Selector: sel.String(), Synced: m.Synced()}
		}
		m.Each(func(_ netip.Addr, mb policy.Member) {
			for _, g := range mb.Groups {
				ps := s.SourcePods[g]
				ps.Addresses++
				s.SourcePods[g] = ps
			}
		})
	}
	for _, part := range p.InsideSpec.Parts {
		s.Inside.Parts = append(s.Inside.Parts, InsidePartSummary{
			Group:      part.Name,
			Ranges:     prefixStrings(part.Prefixes),
			Interfaces: append([]string{}, part.Interfaces...),
		})
	}
	for _, r := range p.Rules {
		rs := RuleSummary{Name: r.Name, From: r.From, To: []string{}, Verify: r.TLS != nil && r.TLS.Verify, InspectTunnels: !r.UninspectedTunnels}
		if rs.From == nil {
			rs.From = []string{}
		}
		for _, n := range r.Names {
			rs.To = append(rs.To, n.Raw)
		}
		rs.To = append(rs.To, prefixStrings(r.Prefixes)...)
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

// prefixStrings writes prefixes as the policy does; never nil.
func prefixStrings(pfx []netip.Prefix) []string {
	out := make([]string, 0, len(pfx))
	for _, x := range pfx {
		out = append(out, x.String())
	}
	return out
}

// FormatPorts writes a port range the way the policy spells it.
func FormatPorts(pr policy.PortRange) string { return pr.Written() }

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// Serve serves h on ln until ctx is done, then shuts down gracefully.
// What net/http reports of its connections (failed TLS handshakes, a
// handler's panic) goes to log, not to the standard library's logger on
// stderr; if log is nil, to slog.Default().
func Serve(ctx context.Context, ln net.Listener, h http.Handler, log *slog.Logger) error {
	if log == nil {
		log = slog.Default()
	}
	srv := &http.Server{
		Handler:           h,
		ErrorLog:          stdlog.New(serverLog{log}, "", 0),
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

// serverLog writes net/http's error lines to slog. A failed TLS handshake
// is the client's doing (a scanner, a wrong or missing client
// certificate, an untrusted server certificate): Info, so a scan does not
// raise alarms, yet an operator setting up client certificates sees why
// a client was turned away. Anything else net/http says (a handler's
// panic, accept errors) is an Error.
type serverLog struct{ log *slog.Logger }

func (s serverLog) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	if rest, ok := strings.CutPrefix(line, "http: TLS handshake error from "); ok {
		from, err, _ := strings.Cut(rest, ": ")
		s.log.Info("admin TLS handshake failed", "from", from, "err", err)
		return len(p), nil
	}
	s.log.Error("admin server", "err", strings.TrimPrefix(line, "http: "))
	return len(p), nil
}
