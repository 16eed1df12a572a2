package admin

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"net/http"
	"strings"
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

// allowed reports whether r satisfies a, and if not, why, for the 401.
func (a Auth) allowed(r *http.Request) (bool, string) {
	if a.ClientCert && (r.TLS == nil || len(r.TLS.VerifiedChains) == 0) {
		return false, "a TLS client certificate signed by admin.client_ca is required"
	}
	if len(a.Token) == 0 {
		return true, ""
	}
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, tok, ok := strings.Cut(h, " ")
		if ok && strings.EqualFold(scheme, "Bearer") && a.tokenOK(strings.TrimSpace(tok)) {
			return true, ""
		}
		return false, "the bearer token is wrong"
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

// open reports whether path is served without authentication: probes,
// and the console's login page and its stylesheet.
func open(path string) bool {
	switch path {
	case "/healthz", "/readyz", "/ui/login", "/ui/logout", "/ui/static/console.css":
		return true
	}
	return false
}

// protect wraps h with a's checks, and serves the console's login and
// logout posts (the login form itself is the console's).
func (a Auth) protect(h http.Handler) http.Handler {
	if !a.required() {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodPost && r.URL.Path == "/ui/login":
			a.login(w, r)
			return
		case r.Method == http.MethodPost && r.URL.Path == "/ui/logout":
			http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
			http.Redirect(w, r, "/ui/login", http.StatusSeeOther)
			return
		case open(r.URL.Path):
			h.ServeHTTP(w, r)
			return
		}
		ok, why := a.allowed(r)
		if ok {
			h.ServeHTTP(w, r)
			return
		}
		if len(a.Token) > 0 && r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/ui/") &&
			strings.Contains(r.Header.Get("Accept"), "text/html") && (!a.ClientCert || r.TLS != nil && len(r.TLS.VerifiedChains) > 0) {
			// A browser: to the login form, which sets the cookie.
			http.Redirect(w, r, "/ui/login", http.StatusSeeOther)
			return
		}
		if len(a.Token) > 0 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="fqdngate admin"`)
		}
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": why})
	})
}

// login checks the posted token and sets the session cookie. The form
// posts from the same origin; SameSite=Strict keeps other sites' pages
// from riding the session, and the console only reads.
func (a Auth) login(w http.ResponseWriter, r *http.Request) {
	if a.ClientCert && (r.TLS == nil || len(r.TLS.VerifiedChains) == 0) {
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "a TLS client certificate signed by admin.client_ca is required"})
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 4<<10)
	if len(a.Token) == 0 || !a.tokenOK(strings.TrimSpace(r.PostFormValue("token"))) {
		http.Redirect(w, r, "/ui/login?failed=1", http.StatusSeeOther)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: a.session(), Path: "/", HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, "/ui/", http.StatusSeeOther)
}
