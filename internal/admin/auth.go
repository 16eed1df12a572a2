package admin

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"golang.org/x/time/rate"

	"github.com/fqdngate/fqdngate/internal/ratelimit"
)

// Auth is what the endpoint asks of a request beyond /healthz and
// /readyz (open for probes) and the console's login page. The zero value
// asks nothing: the endpoint then relies on listening on loopback.
type Auth struct {
	// Token, if not empty, must come as "Authorization: Bearer TOKEN" or
	// as the console's session cookie (SessionCookie), which POST
	// /ui/login sets for the token. Compared in constant time.
	Token []byte
	// ClientCert, if true, requires a TLS client certificate that the
	// listener verified (policy.AdminTLS: the certificate is checked
	// during the handshake when given; this refuses requests without
	// one).
	ClientCert bool
}

// SessionCookie names the console's session cookie. Its value is an
// HMAC of the token, not the token: a browser never stores the secret
// scripts use, and changing the token ends every session.
const SessionCookie = "fqdngate_session"

func (a Auth) required() bool { return len(a.Token) > 0 || a.ClientCert }

// session is the session cookie's value for a's token.
func (a Auth) session() string {
	m := hmac.New(sha256.New, a.Token)
	m.Write([]byte("fqdngate admin console session v1"))
	return hex.EncodeToString(m.Sum(nil))
}

// tokenOK compares a presented token with a's in constant time (over
// their hashes, so the length does not leak either).
func (a Auth) tokenOK(presented string) bool {
	x, y := sha256.Sum256([]byte(presented)), sha256.Sum256(a.Token)
	return subtle.ConstantTimeCompare(x[:], y[:]) == 1
}

// certOK reports whether r satisfies a's client certificate demand.
func (a Auth) certOK(r *http.Request) bool {
	return !a.ClientCert || r.TLS != nil && len(r.TLS.VerifiedChains) > 0
}

// allowed reports whether r satisfies a without a token attempt (a
// client certificate, a session cookie), and if not, why, for the 401.
// A bearer token is an attempt: guard.attempt checks it.
func (a Auth) allowed(r *http.Request) (bool, string) {
	if !a.certOK(r) {
		return false, "a TLS client certificate signed by admin.client_ca is required"
	}
	if len(a.Token) == 0 {
		return true, ""
	}
	if c, err := r.Cookie(SessionCookie); err == nil {
		want := a.session()
		if subtle.ConstantTimeCompare([]byte(c.Value), []byte(want)) == 1 {
			return true, ""
		}
		return false, "the console session is not valid any more; log in again"
	}
	return false, "send the admin token as Authorization: Bearer TOKEN (the token in admin.token_file)"
}

// bearer returns the token of r's Authorization header, and whether it
// has one (an Authorization header of another scheme is a wrong token).
func bearer(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return "", false
	}
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", true
	}
	return strings.TrimSpace(tok), true
}

// open reports whether path is served without authentication: probes,
// and the console's login page and its stylesheet.
func open(path string) bool {
	switch path {
	case "/healthz", "/readyz", "/ui/login", "/ui/logout", "/ui/static/console.css":
		return true
	}
	return false
}

// Token attempts (the login form's, a bearer token's) are limited per
// source (an IPv4 address, an IPv6 /64): loginBurst wrong tokens at
// once, then one every loginEvery. A wrong token costs a token of the
// source's bucket; a right one costs nothing, so an operator's scripts
// and browser are never slowed by their own use, and an operator who
// mistyped waits a second at most once the burst is spent. A guesser
// gets one try a second per address: with a token of 32 hex digits
// (128 bits), never.
const (
	loginBurst = 5
	loginEvery = time.Second
	// maxLoginSources bounds the buckets kept (ratelimit.Clients).
	maxLoginSources = 4096
)

// guard is Auth at work: a's checks with the token attempts limited.
type guard struct {
	a     Auth
	h     http.Handler
	log   *slog.Logger
	now   func() time.Time
	tries *ratelimit.Clients
}

// protect wraps h with a's checks, and serves the console's login and
// logout posts (the login form itself is the console's).
func (a Auth) protect(h http.Handler, log *slog.Logger, now func() time.Time) http.Handler {
	if !a.required() {
		return h
	}
	return &guard{a: a, h: h, log: log, now: now, tries: ratelimit.New(maxLoginSources)}
}

func (g *guard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a := g.a
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/ui/login":
		g.login(w, r)
		return
	case r.Method == http.MethodPost && r.URL.Path == "/ui/logout":
		http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
		http.Redirect(w, r, "/ui/login", http.StatusSeeOther)
		return
	case open(r.URL.Path):
		g.h.ServeHTTP(w, r)
		return
	}
	if tok, ok := bearer(r); ok && a.certOK(r) && len(a.Token) > 0 {
		switch ok, wait := g.attempt(r, tok, "bearer"); {
		case wait > 0:
			tooMany(w, wait)
		case ok:
			g.h.ServeHTTP(w, r)
		default:
			w.Header().Set("WWW-Authenticate", `Bearer realm="fqdngate admin"`)
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "the bearer token is wrong"})
		}
		return
	}
	ok, why := a.allowed(r)
	if ok {
		g.h.ServeHTTP(w, r)
		return
	}
	if len(a.Token) > 0 && r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/ui/") &&
		strings.Contains(r.Header.Get("Accept"), "text/html") && a.certOK(r) {
		// A browser: to the login form, which sets the cookie.
		http.Redirect(w, r, "/ui/login", http.StatusSeeOther)
		return
	}
	if len(a.Token) > 0 {
		w.Header().Set("WWW-Authenticate", `Bearer realm="fqdngate admin"`)
	}
	writeJSON(w, http.StatusUnauthorized, map[string]string{"error": why})
}

// attempt checks a presented token under its source's limit: whether it
// is right, or, when the source has spent its attempts, how long until
// the next one (and the token is not even compared). A wrong token is
// logged with the source, never with what was presented.
func (g *guard) attempt(r *http.Request, presented, via string) (bool, time.Duration) {
	src := remoteAddr(r)
	now := g.now()
	b := g.tries.Bucket(src, rate.Every(loginEvery), loginBurst)
	if t := b.TokensAt(now); t < 1 {
		return false, time.Duration((1 - t) * float64(loginEvery))
	}
	if g.a.tokenOK(presented) {
		return true, time.Duration(0)
	}
	// Reserved, never cancelled: concurrent wrong tokens that all passed
	// the check above put the bucket in debt, so the rate holds however
	// many are in flight.
	b.ReserveN(now, 1)
	left := b.TokensAt(now)
	g.log.Warn("admin token refused", "component", "admin", "from", src.String(), "via", via, "path", r.URL.Path, "attempts_left", max(int(left), 0))
	if left < 1 {
		g.log.Warn("admin token attempts from this source are limited to one a second", "component", "admin", "from", src.String())
	}
	return false, 0
}

// remoteAddr is r's source address; the zero Addr (one shared bucket)
// if it cannot be read, which only a test's handler call would produce.
func remoteAddr(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr()
}

// tooMany answers a token attempt over its source's limit.
func tooMany(w http.ResponseWriter, wait time.Duration) {
	secs := int(math.Ceil(wait.Seconds()))
	secs = max(secs, 1)
	w.Header().Set("Retry-After", strconv.Itoa(secs))
	writeJSON(w, http.StatusTooManyRequests, map[string]string{"error": fmt.Sprintf("too many wrong admin tokens from this address; try again in %d s", secs)})
}

// login checks the posted token and sets the session cookie. The form
// posts from the same origin; SameSite=Strict keeps other sites' pages
// from riding the session, and the console only reads.
func (g *guard) login(w http.ResponseWriter, r *http.Request) {
	a := g.a
	if !a.certOK(r) {
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "a TLS client certificate signed by admin.client_ca is required"})
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 4<<10)
	if len(a.Token) == 0 {
		http.Redirect(w, r, "/ui/login?failed=1", http.StatusSeeOther)
		return
	}
	ok, wait := g.attempt(r, strings.TrimSpace(r.PostFormValue("token")), "login form")
	switch {
	case wait > 0:
		tooMany(w, wait)
		return
	case !ok:
		http.Redirect(w, r, "/ui/login?failed=1", http.StatusSeeOther)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: a.session(), Path: "/", HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, "/ui/", http.StatusSeeOther)
}
