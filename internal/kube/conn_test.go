package kube

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestClientNotesUnreachableAPI: the client NewClient makes tells Status
// when the API server cannot be reached at all (client-go's reflector
// retries such watches without reporting them), and stops as soon as a
// request is answered again, whatever its status.
func TestClientNotesUnreachableAPI(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "no", http.StatusForbidden)
	}))
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	body := "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: " + srv.URL + "}}]\n" +
		"users: [{name: u, user: {token: x}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n"
	if err := os.WriteFile(kubeconfig, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	cs, err := NewClient(kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	h := cs.(client).conn
	get := func() { _, _ = cs.CoreV1().Pods("").List(t.Context(), metav1.ListOptions{}) }

	get()
	if msg, _ := h.status(); msg != "" {
		t.Fatalf("after a 403 from the server: failing %q, want not failing (the server answered)", msg)
	}
	srv.Close()
	start := time.Now()
	get()
	get()
	msg, since := h.status()
	if !strings.Contains(msg, "connect") || since.Before(start) || since.After(time.Now()) {
		t.Fatalf("server gone: status %q since %v, want a connection failure since the first one", msg, since)
	}
	h.note(nil)
	if msg, _ := h.status(); msg != "" {
		t.Fatalf("after an answered request: failing %q", msg)
	}
}
