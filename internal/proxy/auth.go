package proxy

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"runtime"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/fqdngate/fqdngate/internal/policy"
)

// authenticator checks Proxy-Authorization: Basic credentials against the
// policy's bcrypt hashes. bcrypt is slow on purpose, so results are cached
// under a SHA-256 of user, password and stored hash (never the password
// itself; a changed hash misses the cache), and concurrent bcrypt runs are
// bounded so a flood of wrong passwords cannot starve honest clients of CPU.
type authenticator struct {
	now func() time.Time
	sem chan struct{}

	mu    sync.Mutex // guards following
	cache map[[32]byte]authEntry
}

type authEntry struct {
	ok      bool
	expires time.Time
}

const (
	authTTL        = 5 * time.Minute
	authMaxEntries = 4096
)

var errBadCredentials = errors.New("wrong user name or password")

func newAuthenticator(now func() time.Time) *authenticator {
	return &authenticator{
		now:   now,
		sem:   make(chan struct{}, max(1, runtime.GOMAXPROCS(0)/2)),
		cache: make(map[[32]byte]authEntry),
	}
}

// check returns the user named by header, "" when header is empty, or an
// error for malformed or wrong credentials.
func (a *authenticator) check(ctx context.Context, pol *policy.Policy, header string) (string, error) {
	if header == "" {
		return "", nil
	}
	scheme, cred, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "Basic") {
		return "", errors.New("only Basic proxy authentication is supported")
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(cred))
	if err != nil {
		return "", errors.New("malformed Basic credentials")
	}
	user, pass, ok := strings.Cut(string(raw), ":")
	if !ok {
		return "", errors.New("malformed Basic credentials")
	}
	u, known := pol.Users[user]
	if !known {
		return "", errBadCredentials
	}
	h := sha256.New()
	for _, s := range []string{user, pass, u.Hash} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	var key [32]byte
	h.Sum(key[:0])

	now := a.now()
	a.mu.Lock()
	e, hit := a.cache[key]
	a.mu.Unlock()
	if !hit || !now.Before(e.expires) {
		select {
		case a.sem <- struct{}{}:
		case <-ctx.Done():
			return "", ctx.Err()
		}
		good := bcrypt.CompareHashAndPassword([]byte(u.Hash), []byte(pass)) == nil
		<-a.sem
		e = authEntry{ok: good, expires: now.Add(authTTL)}
		a.mu.Lock()
		if len(a.cache) >= authMaxEntries {
			for k := range a.cache { // arbitrary eviction keeps the bound
				delete(a.cache, k)
				if len(a.cache) < authMaxEntries/2 {
					break
				}
			}
		}
		a.cache[key] = e
		a.mu.Unlock()
	}
	if !e.ok {
		return "", errBadCredentials
	}
	return user, nil
}
