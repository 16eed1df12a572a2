package cluster

import (
	"context"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/testutil/certs"
)

// pki is a CA and the files a TLS etcd and its clients need.
type pki struct {
	caFile               string
	serverCert, serverKy string
	clientCert, clientKy string
}

// newPKI mints a CA, a server certificate for etcd on 127.0.0.1 and a
// client certificate for gateway gw-a (its common name, which etcd takes
// as the user once authentication is on).
func newPKI(t *testing.T) *pki {
	t.Helper()
	ca := certs.NewCA(t)
	p := &pki{caFile: ca.WriteFile(t)}
	p.serverCert, p.serverKy = ca.LeafFiles(t, "127.0.0.1")
	p.clientCert, p.clientKy = ca.LeafFiles(t, "gw-a")
	return p
}

// startTLSEtcd runs one etcd member whose clients must present a
// certificate the CA signed, and returns its client URL.
func startTLSEtcd(t *testing.T, p *pki) string {
	t.Helper()
	cfg := embed.NewConfig()
	cfg.Name = "tls"
	cfg.Dir = t.TempDir()
	peer := url.URL{Scheme: "http", Host: freeLoopback(t)}
	client := url.URL{Scheme: "https", Host: freeLoopback(t)}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.InitialCluster = "tls=" + peer.String()
	cfg.ClientTLSInfo = transport.TLSInfo{CertFile: p.serverCert, KeyFile: p.serverKy, TrustedCAFile: p.caFile, ClientCertAuth: true}
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(wait):
		t.Fatal("TLS etcd not ready")
	}
	return client.String()
}

// freeLoopback returns a loopback address whose port was free a moment
// ago, below the ephemeral range so that no outgoing connection takes it.
func freeLoopback(t *testing.T) string {
	t.Helper()
	for range 100 {
		addr := fmt.Sprintf("127.0.0.1:%d", 20000+mrand.IntN(12000))
		if ln, err := net.Listen("tcp", addr); err == nil {
			ln.Close()
			return addr
		}
	}
	t.Fatal("no free loopback port below the ephemeral range")
	return ""
}

// TestDialTLS: etcd over TLS with client certificates, then with a user
// and a password file; each mistake gives an error that names the setting
// and never the password.
func TestDialTLS(t *testing.T) {
	p := newPKI(t)
	ep := startTLSEtcd(t, p)
	good := &policy.Cluster{Endpoints: []string{ep}, CAFile: p.caFile, CertFile: p.clientCert, KeyFile: p.clientKy, Prefix: prefix}
	cli, err := Dial(good)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if _, err := cli.Put(ctx, "/probe", "1"); err != nil {
		t.Fatalf("put over TLS with a client certificate: %v", err)
	}

	// Without a client certificate etcd refuses the connection.
	noCert := *good
	noCert.CertFile, noCert.KeyFile = "", ""
	if c, err := Dial(&noCert); err == nil {
		sctx, scancel := context.WithTimeout(context.Background(), 3*time.Second)
		_, err = c.Get(sctx, "/probe")
		scancel()
		c.Close()
		if err == nil {
			t.Error("etcd answered a client without a certificate")
		}
	}

	notPEM := *good
	notPEM.CAFile = p.clientKy + ".missing"
	if _, err := Dial(&notPEM); err == nil || !strings.Contains(err.Error(), "cluster.etcd.tls.ca_file") {
		t.Errorf("missing CA file: got %v", err)
	}
	swapped := *good
	swapped.CertFile, swapped.KeyFile = p.clientKy, p.clientCert
	if _, err := Dial(&swapped); err == nil || !strings.Contains(err.Error(), "cluster.etcd.tls: loading the client certificate") {
		t.Errorf("certificate and key swapped: got %v", err)
	}

	// A user with a password, auth switched on.
	const secret = "s3cret-Password"
	if _, err := cli.UserAdd(ctx, "root", secret); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.UserGrantRole(ctx, "root", "root"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.AuthEnable(ctx); err != nil {
		t.Fatal(err)
	}
	pwFile := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pwFile, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	withUser := *good
	withUser.Username, withUser.PasswordFile = "root", pwFile
	ucli, err := Dial(&withUser)
	if err != nil {
		t.Fatal(err)
	}
	defer ucli.Close()
	if _, err := ucli.Put(ctx, "/probe", "2"); err != nil {
		t.Fatalf("put as root: %v", err)
	}
	for name, content := range map[string]string{"empty": "\n", "two lines": secret + "\nmore\n", "wrong": "not-the-password\n"} {
		if err := os.WriteFile(pwFile, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := Dial(&withUser)
		if err == nil {
			sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err = c.Put(sctx, "/probe", "3")
			scancel()
			c.Close()
		}
		if err == nil {
			t.Errorf("password file %s: got no error", name)
			continue
		}
		if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), "not-the-password") {
			t.Errorf("password file %s: the error holds the password: %v", name, err)
		}
	}
}
