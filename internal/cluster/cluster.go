// Package cluster is what a fleet of gateways keeps in etcd besides the
// learned addresses: the shared policy's revisions, each gateway's
// lease-bound status, and the fleet's view of both.
//
// Keys, under the cluster's prefix (default /fqdngate/):
//
//	policy/current           the shared revision in force: its number, in decimal
//	policy/revisions/<n>     revision n (20 digits), JSON: content, sha256, author, time
//	status/<node>            the node's status, JSON, bound to its lease
//	members/<node>           that the node has been part of the fleet (no lease),
//	                         so that fleet status can say when it is gone
//
// (internal/fleet owns learned/, nodes/ and leader/.)
package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/fqdngate/fqdngate/internal/policy"
)

// DialTimeout bounds connecting to etcd.
const DialTimeout = 5 * time.Second

// Dial returns a client for the cluster's etcd: over TLS with the
// configured client certificate when the endpoints are https, with the
// username and the password file's content when set. It does not wait for
// etcd to answer; the first request says whether it does. Errors name the
// setting to fix and never hold the password.
func Dial(c *policy.Cluster) (*clientv3.Client, error) {
	cfg := clientv3.Config{
		Endpoints:            c.Endpoints,
		DialTimeout:          DialTimeout,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		// etcd's client logs through zap by itself; fqdngate reports what
		// matters through its own log and status instead.
		Logger: zap.NewNop(),
	}
	t, user, pw, err := credentials(c)
	if err != nil {
		return nil, err
	}
	cfg.TLS, cfg.Username, cfg.Password = t, user, pw
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("connecting to etcd at %s: %v; check cluster.etcd.endpoints", strings.Join(c.Endpoints, ", "), err)
	}
	return cli, nil
}

// CheckCredentials reports what keeps Dial from using c's credentials on
// this host: a CA file that holds no certificate, a client certificate
// and key that do not load, an empty password file. fqdngate check and
// the daemon's start report it.
func CheckCredentials(c *policy.Cluster) error {
	_, _, _, err := credentials(c)
	return err
}

// credentials loads c's TLS configuration (nil for http endpoints) and
// its user and password (empty without).
func credentials(c *policy.Cluster) (t *tls.Config, user, password string, err error) {
	if len(c.Endpoints) > 0 && strings.HasPrefix(c.Endpoints[0], "https://") {
		if t, err = tlsConfig(c); err != nil {
			return nil, "", "", err
		}
	}
	if c.Username != "" {
		if password, err = readPassword(c.PasswordFile); err != nil {
			return nil, "", "", err
		}
	}
	return t, c.Username, password, nil
}

func tlsConfig(c *policy.Cluster) (*tls.Config, error) {
	t := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("cluster.etcd.tls.ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("cluster.etcd.tls.ca_file %s holds no PEM certificate; give the CA that signed etcd's certificate", c.CAFile)
		}
		t.RootCAs = pool
	}
	if c.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			// The error names the files, never the key's bytes.
			return nil, fmt.Errorf("cluster.etcd.tls: loading the client certificate %s and key %s: %v", c.CertFile, c.KeyFile, err)
		}
		t.Certificates = []tls.Certificate{cert}
	}
	return t, nil
}

// readPassword reads a password file: its content less a final newline.
func readPassword(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("cluster.etcd.password_file: %w", err)
	}
	pw := strings.TrimRight(string(b), "\r\n")
	if pw == "" {
		return "", fmt.Errorf("cluster.etcd.password_file %s is empty; write the etcd user's password in it", path)
	}
	if strings.ContainsAny(pw, "\r\n") {
		return "", fmt.Errorf("cluster.etcd.password_file %s has more than one line; it must hold the password alone", path)
	}
	return pw, nil
}

// Keys is the fleet's key space under a prefix.
type Keys struct{ Prefix string }

func (k Keys) current() string           { return k.Prefix + "policy/current" }
func (k Keys) revisions() string         { return k.Prefix + "policy/revisions/" }
func (k Keys) revision(n int64) string   { return fmt.Sprintf("%s%020d", k.revisions(), n) }
func (k Keys) statuses() string          { return k.Prefix + "status/" }
func (k Keys) status(node string) string { return k.statuses() + node }
func (k Keys) members() string           { return k.Prefix + "members/" }
func (k Keys) member(node string) string { return k.members() + node }

// unreachable wraps an error talking to etcd with what to check.
func unreachable(what string, err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s: etcd did not answer in time; check that etcd runs, is reachable at cluster.etcd.endpoints and has a leader: %w", what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}
