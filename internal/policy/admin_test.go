package policy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fqdngate/fqdngate/internal/testutil/certs"
)

func TestAdminSection(t *testing.T) {
	dir := t.TempDir()
	tok := filepath.Join(dir, "token")
	if err := os.WriteFile(tok, []byte("0123456789abcdef0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	short := filepath.Join(dir, "short")
	if err := os.WriteFile(short, []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ca := certs.NewCA(t)
	caFile := ca.WriteFile(t)
	cert, key := ca.LeafFiles(t, "127.0.0.1")
	const rule = "rules:\n  - name: x\n    to: example.com\n"
	for _, tt := range []struct {
		name, yaml string
		want       Admin
		listen     string
		errs       []string // substrings of the error; none: valid
	}{
		{name: "default: loopback, no auth", listen: "127.0.0.1:15380"},
		{name: "listen.admin still works", yaml: "listen: {admin: 127.0.0.1:9999}\n", listen: "127.0.0.1:9999"},
		{name: "admin.listen", yaml: "admin: {listen: 127.0.0.1:9998}\n", listen: "127.0.0.1:9998"},
		{name: "token", yaml: "admin: {token_file: " + tok + "}\n", listen: "127.0.0.1:15380", want: Admin{TokenFile: tok}},
		{name: "client CA", yaml: "admin: {listen: \"[::1]:9443\", client_ca: " + caFile + ", cert_file: " + cert + ", key_file: " + key + "}\n",
			listen: "[::1]:9443", want: Admin{ClientCA: caFile, CertFile: cert, KeyFile: key}},
		{name: "both listens", yaml: "listen: {admin: 127.0.0.1:9999}\nadmin: {listen: 127.0.0.1:9998}\n", errs: []string{"p.yaml:3:17: admin.listen and listen.admin (line 2) are the same setting; keep one"}},
		{name: "missing token file", yaml: "admin: {token_file: " + dir + "/nope}\n", errs: []string{"p.yaml:2:21: admin.token_file:", "no such file"}},
		{name: "short token", yaml: "admin: {token_file: " + short + "}\n", errs: []string{"admin.token_file:", "holds 6 characters", "openssl rand -hex 32"}},
		{name: "client CA without cert", yaml: "admin: {client_ca: " + caFile + "}\n", errs: []string{"admin.client_ca needs the listener to serve HTTPS; add admin.cert_file and admin.key_file"}},
		{name: "cert without key", yaml: "admin: {cert_file: " + cert + "}\n", errs: []string{"give both"}},
		{name: "CA not PEM", yaml: "admin: {client_ca: " + tok + ", cert_file: " + cert + ", key_file: " + key + "}\n", errs: []string{"admin.client_ca:", "no PEM certificate"}},
		{name: "unknown key", yaml: "admin: {token: x}\n", errs: []string{`unknown key "token" in admin; valid keys are listen, token_file`}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse("p.yaml", []byte(upstreams+tt.yaml+rule))
			if len(tt.errs) > 0 {
				if err == nil {
					t.Fatalf("got no error, want %q", tt.errs)
				}
				for _, s := range tt.errs {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("got %q, want it to contain %q", err, s)
					}
				}
				if strings.Contains(err.Error(), "0123456789abcdef") {
					t.Errorf("the error shows the token: %q", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.Admin != tt.want || p.Listen.Admin != tt.listen {
				t.Errorf("got %+v at %s, want %+v at %s", p.Admin, p.Listen.Admin, tt.want, tt.listen)
			}
		})
	}
}

// A fleet gateway's admin section is its own: it goes in the local file.
func TestAdminInFleetLocalFile(t *testing.T) {
	p, err := Compose(Source{Name: "local.yaml", Data: []byte(fleetLocal + "admin: {listen: \"127.0.0.1:9997\"}\n")}, &Source{Name: "shared", Data: []byte(fleetShared)})
	if err != nil {
		t.Fatal(err)
	}
	if p.Listen.Admin != "127.0.0.1:9997" {
		t.Errorf("admin.listen %q, want 127.0.0.1:9997", p.Listen.Admin)
	}
}
