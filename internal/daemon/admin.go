package daemon

import (
	"crypto/tls"
	"fmt"
	"net/http"
	"net/netip"

	"github.com/fqdngate/fqdngate/internal/admin"
	"github.com/fqdngate/fqdngate/internal/console"
	"github.com/fqdngate/fqdngate/internal/policy"
)

// adminAuth reads what the admin section asks of requests (the token,
// the client CA) and the listener's TLS configuration (nil: plain HTTP).
// Read once at start: a changed admin section waits for a restart
// (restartOnly), so a moved listener keeps the protection in force.
func adminAuth(p *policy.Policy) (admin.Auth, *tls.Config, error) {
	var a admin.Auth
	if p.Admin.TokenFile != "" {
		tok, err := policy.ReadAdminToken(p.Admin.TokenFile)
		if err != nil {
			return a, nil, fmt.Errorf("admin.token_file: %w", err)
		}
		a.Token = tok
	}
	tc, err := policy.AdminTLS(p.Admin)
	if err != nil {
		return a, nil, err
	}
	a.ClientCert = p.Admin.ClientCA != ""
	return a, tc, nil
}

// describeAdmin is the admin section's protection as restartPending
// shows it: file names, never the token.
func describeAdmin(p *policy.Policy) string {
	a := p.Admin
	if !a.Auth() && !a.TLS() {
		return "no authentication, plain HTTP"
	}
	return fmt.Sprintf("token_file=%s client_ca=%s cert_file=%s key_file=%s", a.TokenFile, a.ClientCA, a.CertFile, a.KeyFile)
}

// console builds the web console's handler for the admin listener.
func (c *components) console() (http.Handler, error) {
	return console.New(console.Config{
		Policy:  c.d.Policy,
		Local:   c.local,
		Live:    c.live,
		Learned: c.learned,
		History: c.d.queryHistory(),
		Login:   len(c.adminAuth.Token) > 0,
	})
}

// exposedAdmin says, when the admin listener at addr can be reached from
// other hosts and p asks nothing of its requests, what to do about it;
// "" otherwise.
func exposedAdmin(p *policy.Policy, addr string) string {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || ap.Addr().Unmap().IsLoopback() || p.Admin.Auth() {
		return ""
	}
	return "the admin listener on " + addr + " can be reached from other hosts and asks for no token or client certificate: anyone who reaches it reads the policy, the history and the console; set admin.token_file (and admin.client_ca), or listen on 127.0.0.1"
}
