package admin

import (
	"crypto/tls"
	"encoding/json"
	stdlog "log"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/testutil/certs"
	"github.com/fqdngate/fqdngate/internal/testutil/syncbuf"
)

// A failed TLS handshake on the admin listener is a slog record with the
// client's address, and nothing reaches the standard library's logger
// (stderr in the daemon).
func TestTLSHandshakeErrorToSlog(t *testing.T) {
	var std syncbuf.Buffer
	old := stdlog.Writer()
	stdlog.SetOutput(&std)
	t.Cleanup(func() { stdlog.SetOutput(old) })

	var logs syncbuf.Buffer
	log := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ca := certs.NewCA(t)
	tc := &tls.Config{Certificates: []tls.Certificate{ca.Leaf(t, "127.0.0.1")}}
	base := serveLogged(t, Auth{}, tc, log)

	// A client that trusts another CA: it refuses the server's
	// certificate and says so with an alert, which fails the server's
	// side of the handshake.
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "https://"))
	if err != nil {
		t.Fatal(err)
	}
	c := tls.Client(conn, &tls.Config{ServerName: "127.0.0.1", RootCAs: certs.NewCA(t).Pool()})
	if err := c.Handshake(); err == nil {
		t.Fatal("the handshake with an untrusted certificate succeeded")
	}
	c.Close()

	var rec map[string]string
	for deadline := time.Now().Add(10 * time.Second); ; {
		line, _, _ := strings.Cut(logs.String(), "\n")
		if line != "" {
			if err := json.Unmarshal([]byte(line), &rec); err != nil {
				t.Fatalf("log line %q: %v", line, err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no slog record of the failed handshake; the standard logger got %q", std.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if rec["level"] != "INFO" || rec["msg"] != "admin TLS handshake failed" || !strings.HasPrefix(rec["from"], "127.0.0.1:") || !strings.Contains(rec["err"], "certificate") {
		t.Errorf("got record %v, want INFO \"admin TLS handshake failed\" with from and err", rec)
	}
	if s := std.String(); s != "" {
		t.Errorf("the standard library's logger got %q, want nothing", s)
	}
}
