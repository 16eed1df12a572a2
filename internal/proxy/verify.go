package proxy

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/fqdngate/fqdngate/internal/policy"
)

// VerifierConfig bounds a Verifier's cache. Zero values pick the defaults.
type VerifierConfig struct {
	// TTL is how long a successful verification is trusted (default 5m);
	// FailTTL how long a failure is remembered (default 30s), so a client
	// retrying in a loop does not cost a handshake per attempt.
	TTL, FailTTL time.Duration
	// MaxEntries bounds the cache (default 4096).
	MaxEntries int
	// Now is the clock. If nil, time.Now.
	Now func() time.Time
}

// Verifier checks that an address serves a valid certificate for a name,
// with fqdngate's own TLS handshake, before traffic is allowed to it. The
// proxy calls it before connecting a client; the DNS firewall can call it
// before allowing an address in the kernel path. Safe for concurrent use.
//
// Pins are matched against every certificate of the verified chain (leaf,
// intermediates and root), as HPKP did: pinning an intermediate or a root
// survives routine leaf renewals, and pinning the leaf still works. A pin
// only narrows what the chain verification already accepted; it never
// replaces it.
type Verifier struct {
	cfg VerifierConfig

	mu    sync.Mutex // guards following
	cache map[verifyKey]verifyEntry
	pools map[string]poolEntry
}

type verifyKey struct {
	name string
	addr netip.AddrPort
	tls  string // the requirement, so a reload that changes it re-verifies
}

type verifyEntry struct {
	err     error
	expires time.Time
}

type poolEntry struct {
	pool    *x509.CertPool
	err     error
	expires time.Time
}

// NewVerifier returns a Verifier.
func NewVerifier(cfg VerifierConfig) *Verifier {
	if cfg.TTL <= 0 {
		cfg.TTL = 5 * time.Minute
	}
	if cfg.FailTTL <= 0 {
		cfg.FailTTL = 30 * time.Second
	}
	if cfg.MaxEntries <= 0 {
		cfg.MaxEntries = 4096
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Verifier{cfg: cfg, cache: make(map[verifyKey]verifyEntry), pools: make(map[string]poolEntry)}
}

// Verify performs a TLS handshake with addr:port using name as the server
// name, and checks the chain (system roots, or t.CAFile), t.Pins and
// t.MinVersion (default TLS 1.2). A nil t, or one without Verify, passes.
// Results are cached per (name, address, requirement).
func (v *Verifier) Verify(ctx context.Context, name string, addr netip.Addr, port uint16, t *policy.TLS) error {
	if t == nil || !t.Verify {
		return nil
	}
	ap := netip.AddrPortFrom(addr.WithZone(""), port)
	key := verifyKey{name: name, addr: ap, tls: requirementKey(t)}
	now := v.cfg.Now()
	v.mu.Lock()
	if e, ok := v.cache[key]; ok && now.Before(e.expires) {
		v.mu.Unlock()
		return e.err
	}
	v.mu.Unlock()

	err := v.handshake(ctx, name, ap, t)
	if err != nil && ctx.Err() != nil {
		return err // our deadline, not the server's fault: do not remember it
	}
	ttl := v.cfg.TTL
	if err != nil {
		ttl = v.cfg.FailTTL
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.storeLocked(key, verifyEntry{err: err, expires: v.cfg.Now().Add(ttl)})
	return err
}

// storeLocked adds e, evicting expired entries and then arbitrary ones
// when the cache is full, so its size stays bounded.
func (v *Verifier) storeLocked(k verifyKey, e verifyEntry) {
	if len(v.cache) >= v.cfg.MaxEntries {
		now := v.cfg.Now()
		for k2, e2 := range v.cache {
			if !now.Before(e2.expires) {
				delete(v.cache, k2)
			}
		}
		for k2 := range v.cache {
			if len(v.cache) < v.cfg.MaxEntries {
				break
			}
			delete(v.cache, k2)
		}
	}
	v.cache[k] = e
}

func requirementKey(t *policy.TLS) string {
	return fmt.Sprintf("%x|%s|%d", t.Pins, t.CAFile, t.MinVersion)
}

func (v *Verifier) handshake(ctx context.Context, name string, ap netip.AddrPort, t *policy.TLS) error {
	roots, err := v.roots(t.CAFile)
	if err != nil {
		return err
	}
	minVersion := t.MinVersion
	if minVersion == 0 {
		minVersion = tls.VersionTLS12
	}
	cfg := &tls.Config{
		ServerName: name,
		RootCAs:    roots,
		MinVersion: minVersion,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(t.Pins) == 0 || pinned(cs.VerifiedChains, t.Pins) {
				return nil
			}
			return errors.New("no certificate in the chain matches the rule's pins")
		},
	}
	raw, err := newDialer().DialContext(ctx, "tcp", ap.String())
	if err != nil {
		return fmt.Errorf("connecting to %s to verify its certificate: %w", ap, err)
	}
	defer raw.Close()
	if dl, ok := ctx.Deadline(); ok {
		raw.SetDeadline(dl)
	}
	c := tls.Client(raw, cfg)
	if err := c.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("verifying %s at %s: %w", name, ap, err)
	}
	return c.Close()
}

func pinned(chains [][]*x509.Certificate, pins [][32]byte) bool {
	for _, chain := range chains {
		for _, cert := range chain {
			sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
			for _, p := range pins {
				if sum == p {
					return true
				}
			}
		}
	}
	return false
}

// roots returns the pool for caFile, nil (system roots) for "". Pools are
// cached for the success TTL so a rotated CA file is picked up.
func (v *Verifier) roots(caFile string) (*x509.CertPool, error) {
	if caFile == "" {
		return nil, nil
	}
	now := v.cfg.Now()
	v.mu.Lock()
	e, ok := v.pools[caFile]
	v.mu.Unlock()
	if ok && now.Before(e.expires) {
		return e.pool, e.err
	}
	e = poolEntry{expires: now.Add(v.cfg.TTL)}
	data, err := os.ReadFile(caFile)
	if err != nil {
		e.err = fmt.Errorf("reading tls.ca_file: %w", err)
	} else {
		e.pool = x509.NewCertPool()
		if !e.pool.AppendCertsFromPEM(data) {
			e.pool, e.err = nil, fmt.Errorf("tls.ca_file %s holds no PEM certificates", caFile)
		}
	}
	v.mu.Lock()
	v.pools[caFile] = e
	v.mu.Unlock()
	return e.pool, e.err
}
