package policy

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"

	"gopkg.in/yaml.v3"
)

// Admin is who may use the admin listener (listen.admin, or admin.listen)
// beyond /healthz and /readyz, which stay open for probes. The zero value
// asks for nothing: keep the listener on loopback then.
type Admin struct {
	// TokenFile holds a bearer token every request must carry
	// (Authorization: Bearer, or the console's session cookie). Empty:
	// no token.
	TokenFile string
	// ClientCA is a PEM file of CA certificates; when set, requests must
	// come with a TLS client certificate one of them signed. Empty: none.
	ClientCA string
	// CertFile and KeyFile are the listener's own certificate and key:
	// when set the listener serves HTTPS. ClientCA requires them.
	CertFile, KeyFile string
}

// Auth reports whether a requires anything of a request.
func (a Admin) Auth() bool { return a.TokenFile != "" || a.ClientCA != "" }

// TLS reports whether the admin listener serves HTTPS.
func (a Admin) TLS() bool { return a.CertFile != "" }

// MinTokenLen is the shortest admin token accepted: 128 bits of hex.
const MinTokenLen = 32

// ReadAdminToken reads an admin token file: its content, surrounding
// white space removed, at least MinTokenLen bytes of printable ASCII.
// Errors never contain the token.
func ReadAdminToken(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	tok := bytes.TrimSpace(b)
	if len(tok) < MinTokenLen {
		return nil, fmt.Errorf("%s holds %d characters; write a token of at least %d, e.g. the output of: openssl rand -hex 32", path, len(tok), MinTokenLen)
	}
	for _, c := range tok {
		if c <= ' ' || c > '~' {
			return nil, fmt.Errorf("%s holds a token with spaces or characters outside printable ASCII; write one line, e.g. the output of: openssl rand -hex 32", path)
		}
	}
	return tok, nil
}

// ReadClientCA reads a PEM file of CA certificates into a pool.
func ReadClientCA(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, errors.New(path + " holds no PEM certificate; give the CA certificate that signs the clients' certificates")
	}
	return pool, nil
}

// AdminTLS builds the admin listener's TLS configuration from a, or nil
// when a.TLS() is false. With a client CA, a certificate is verified if
// given, and the endpoint refuses requests beyond /healthz and /readyz
// without one: probes need no certificate.
func AdminTLS(a Admin) (*tls.Config, error) {
	if !a.TLS() {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(a.CertFile, a.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("admin.cert_file, admin.key_file: %w", err)
	}
	c := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if a.ClientCA != "" {
		pool, err := ReadClientCA(a.ClientCA)
		if err != nil {
			return nil, fmt.Errorf("admin.client_ca: %w", err)
		}
		c.ClientCAs = pool
		c.ClientAuth = tls.VerifyClientCertIfGiven
	}
	return c, nil
}

// admin decodes the admin section: listen is the same setting as
// listen.admin (one of them, not both).
func (d *decoder) admin(n *yaml.Node, p *Policy, listenNodes map[string]*yaml.Node) {
	var caNode, certNode, keyNode, tokNode *yaml.Node
	d.mapping(n, "admin",
		field{"listen", func(v *yaml.Node) {
			if l := listenNodes["admin"]; l != nil {
				d.errorf(v, "admin.listen and listen.admin (line %d) are the same setting; keep one", l.Line)
				return
			}
			listenNodes["admin"] = v
			d.addr(&p.Listen.Admin, "admin.listen")(v)
		}},
		field{"token_file", func(v *yaml.Node) { tokNode = v; d.str(&p.Admin.TokenFile, "admin.token_file")(v) }},
		field{"client_ca", func(v *yaml.Node) { caNode = v; d.str(&p.Admin.ClientCA, "admin.client_ca")(v) }},
		field{"cert_file", func(v *yaml.Node) { certNode = v; d.str(&p.Admin.CertFile, "admin.cert_file")(v) }},
		field{"key_file", func(v *yaml.Node) { keyNode = v; d.str(&p.Admin.KeyFile, "admin.key_file")(v) }},
	)
	a := p.Admin
	if a.TokenFile != "" {
		if _, err := ReadAdminToken(a.TokenFile); err != nil {
			d.errorf(tokNode, "admin.token_file: %s", strings.TrimPrefix(err.Error(), "open "))
		}
	}
	if (a.CertFile == "") != (a.KeyFile == "") {
		at := certNode
		if at == nil {
			at = keyNode
		}
		d.errorf(at, "admin.cert_file and admin.key_file go together; give both (the listener then serves HTTPS) or neither")
		return
	}
	if a.ClientCA != "" && a.CertFile == "" {
		d.errorf(caNode, "admin.client_ca needs the listener to serve HTTPS; add admin.cert_file and admin.key_file (its certificate and key)")
		return
	}
	if a.CertFile != "" {
		at := certNode
		if _, err := AdminTLS(a); err != nil {
			if strings.HasPrefix(err.Error(), "admin.client_ca") {
				at = caNode
			}
			d.errorf(at, "%v", err)
		}
	}
}
