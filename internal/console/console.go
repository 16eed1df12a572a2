// Package console serves fqdngate's read-only web console under /ui/ on
// the admin listener: live decisions, the decision history, learned
// addresses, rules, explain and suggestions, as server-rendered pages
// with everything embedded in the binary.
package console

import (
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"fmt"
	"html/template"
	"io/fs"
	"iter"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/fqdngate/fqdngate/internal/dnsname"
	"github.com/fqdngate/fqdngate/internal/history"
	"github.com/fqdngate/fqdngate/internal/learn"
	"github.com/fqdngate/fqdngate/internal/netaddr"
	"github.com/fqdngate/fqdngate/internal/policy"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Config wires the console to the daemon. Policy is required.
type Config struct {
	// Policy returns the policy in force. The rules page reads its rules'
	// usage (Policy.RulesUsage) and the groups page its observing groups
	// (Policy.Observed at the policy's clock) from it.
	Policy func() *policy.Policy
	// Local is this host's addresses, for explain (as /v1/explain).
	Local netaddr.Host
	// Live follows decisions. If nil, the live page says it is off.
	Live *Live
	// Learned lists learned addresses, only a name's when the name is not
	// empty (as admin.Config.Learned); the page shows one page of them.
	// If nil, none.
	Learned func(dnsname.Name) iter.Seq[learn.Entry]
	// History reads the decision history. If nil, the history pages say
	// history is off.
	History func(context.Context, history.Filter) ([]history.Row, error)
	// Login is true when the admin listener asks for a token: the console
	// then shows its login form and a log-out button.
	Login bool
	// Now is the clock; if nil, time.Now.
	Now func() time.Time
}

type handler struct {
	c     Config
	pages map[string]*template.Template
	mux   *http.ServeMux
}

// New returns the console's handler for paths under /ui/.
func New(c Config) (http.Handler, error) {
	if c.Now == nil {
		c.Now = time.Now
	}
	h := &handler{c: c, pages: map[string]*template.Template{}, mux: http.NewServeMux()}
	funcs := template.FuncMap{
		"join":  strings.Join,
		"since": func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04") },
		"ago": func(t time.Time) string {
			if t.IsZero() {
				return "never"
			}
			return c.Now().Sub(t).Round(time.Second).String() + " ago"
		},
	}
	layout, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "templates/layout.html")
	if err != nil {
		return nil, err
	}
	names, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		return nil, err
	}
	for _, n := range names {
		base := strings.TrimSuffix(strings.TrimPrefix(n, "templates/"), ".html")
		if base == "layout" {
			continue
		}
		t, err := template.Must(layout.Clone()).ParseFS(templateFS, n)
		if err != nil {
			return nil, err
		}
		h.pages[base] = t
	}
	static, err := fs.Sub(staticFS, "static")
	if err != nil {
		return nil, err
	}
	h.mux.Handle("GET /ui/static/", http.StripPrefix("/ui/static/", http.FileServerFS(static)))
	h.mux.HandleFunc("GET /ui/{$}", h.live)
	h.mux.HandleFunc("GET /ui/events", h.events)
	h.mux.HandleFunc("GET /ui/top", h.top)
	h.mux.HandleFunc("GET /ui/domains", h.domains)
	h.mux.HandleFunc("GET /ui/learned", h.learned)
	h.mux.HandleFunc("GET /ui/rules", h.rules)
	h.mux.HandleFunc("GET /ui/groups", h.groups)
	h.mux.HandleFunc("GET /ui/explain", h.explain)
	h.mux.HandleFunc("GET /ui/suggest", h.suggest)
	h.mux.HandleFunc("GET /ui/login", h.login)
	return h, nil
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// Nothing but this origin's own files: no inline script, no frames.
	w.Header().Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Referrer-Policy", "no-referrer")
	w.Header().Set("Cache-Control", "no-store")
	h.mux.ServeHTTP(w, r)
}

// page is what every page template gets.
type page struct {
	Title  string
	Nav    string // the nav entry that is the current page
	Login  bool
	Policy *policy.Policy
	Groups []string // the policy's source groups, sorted
	Error  string
	Data   any
}

func (h *handler) render(w http.ResponseWriter, r *http.Request, name, title string, data any, errMsg string) {
	p := h.c.Policy()
	groups := make([]string, 0, len(p.Sources))
	for g := range p.Sources {
		groups = append(groups, g)
	}
	sort.Strings(groups)
	var buf bytes.Buffer
	err := h.pages[name].ExecuteTemplate(&buf, "layout.html", page{Title: title, Nav: name, Login: h.c.Login, Policy: p, Groups: groups, Error: errMsg, Data: data})
	if err != nil {
		http.Error(w, "rendering the page: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if errMsg != "" {
		w.WriteHeader(http.StatusBadRequest)
	}
	_, _ = w.Write(buf.Bytes())
}

// liveFilter is the live view's filter, kept in the page's URL.
type liveFilter struct {
	Group, Component, Action, Name string
}

func parseLiveFilter(q url.Values) liveFilter {
	return liveFilter{
		Group: q.Get("group"), Component: q.Get("component"), Action: q.Get("action"),
		Name: strings.ToLower(strings.TrimSuffix(strings.TrimSpace(q.Get("name")), ".")),
	}
}

func (f liveFilter) query() string {
	v := url.Values{}
	for k, s := range map[string]string{"group": f.Group, "component": f.Component, "action": f.Action, "name": f.Name} {
		if s != "" {
			v.Set(k, s)
		}
	}
	return v.Encode()
}

// match reports whether d passes f; name matches as a substring.
func (f liveFilter) match(d Decision) bool {
	return (f.Group == "" || slices.Contains(d.Groups, f.Group)) &&
		(f.Component == "" || d.Component == f.Component) &&
		(f.Action == "" || d.Action == f.Action) &&
		(f.Name == "" || strings.Contains(strings.ToLower(d.Name), f.Name))
}

func (h *handler) live(w http.ResponseWriter, r *http.Request) {
	f := parseLiveFilter(r.URL.Query())
	src := "/ui/events"
	if q := f.query(); q != "" {
		src += "?" + q
	}
	h.render(w, r, "live", "Live decisions", struct {
		F          liveFilter
		Src        string
		On         bool
		Components []string
		Actions    []string
	}{f, src, h.c.Live != nil, []string{"dns", "proxy", "firewall"}, []string{"allow", "deny", "would-deny", "fail"}}, "")
}

// events streams the decisions passing the URL's filter as server-sent
// events: "decision" with a Decision, "dropped" with how many were lost
// since the last one.
func (h *handler) events(w http.ResponseWriter, r *http.Request) {
	if h.c.Live == nil {
		http.Error(w, "the live view is off", http.StatusNotFound)
		return
	}
	f := parseLiveFilter(r.URL.Query())
	sub, err := h.c.Live.subscribe()
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	defer h.c.Live.unsubscribe(sub)
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	// The admin server's write timeout ends ordinary responses; a stream
	// moves its deadline on with every write instead.
	send := func(s string) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(30 * time.Second))
		if _, err := w.Write([]byte(s)); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	if !send("retry: 2000\n: following decisions\n\n") {
		return
	}
	beat := time.NewTicker(15 * time.Second)
	defer beat.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-beat.C:
			if !send(": still here\n\n") {
				return
			}
		case d := <-sub.ch:
			if n := sub.dropped.Swap(0); n > 0 && !send(fmt.Sprintf("event: dropped\ndata: %d\n\n", n)) {
				return
			}
			if src, err := parseAddr(d.Source); err == nil {
				d.Groups = h.c.Policy().GroupsOf(src)
			}
			if d.Groups == nil {
				d.Groups = []string{}
			}
			if !f.match(d) {
				continue
			}
			b, _ := json.Marshal(d)
			if !send("event: decision\ndata: " + string(b) + "\n\n") {
				return
			}
		}
	}
}
