package kube

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/fqdngate/fqdngate/internal/testutil/kubetest"
)

// waitStatus waits until the watcher's status satisfies cond.
func (h *harness) waitStatus(what string, within time.Duration, cond func(Status) bool) Status {
	h.t.Helper()
	deadline := time.Now().Add(within)
	for {
		st := h.w.Status()
		if cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("no status with %s within %v; last: %+v", what, within, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestStatusClearsOnRelist: a failing list is reported until the informer
// lists successfully again, not until some object changes.
func TestStatusClearsOnRelist(t *testing.T) {
	p := mustPolicy(t, testPolicy)
	client := fake.NewClientset(ns("payments", nil), mkPod("payments", "c1", "node-a", "checkout", "10.244.1.5"))
	var failing atomic.Bool
	failing.Store(true)
	client.PrependReactor("list", "namespaces", func(k8stesting.Action) (bool, runtime.Object, error) {
		if failing.Load() {
			return true, nil, errors.New("etcdserver: request timed out")
		}
		return false, nil, nil
	})
	h := start(t, p, "node-a", client)
	st := h.waitStatus("an API error", 10*time.Second, func(st Status) bool { return st.APIError != "" })
	if st.Unreachable || !strings.Contains(st.APIError, "timed out") || st.Since.IsZero() {
		t.Errorf("status %+v, want the error, not unreachable, with its start", st)
	}
	failing.Store(false)
	h.waitStatus("no API error after the relist", 20*time.Second, func(st Status) bool { return st.APIError == "" && st.Synced })
	h.waitFor("the pod", has("10.244.1.5", "checkout"))
}

func TestDialFailed(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	_, refused := net.Dial("tcp", addr)
	for _, c := range []struct {
		err  error
		want bool
	}{
		{refused, true},
		{&net.OpError{Op: "read", Err: errors.New("connection reset by peer")}, false},
		{errors.New("connection refused"), false}, // not from a dial
		{errors.New("pods is forbidden"), false},
	} {
		if got := dialFailed(c.err); got != c.want {
			t.Errorf("dialFailed(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

// TestAPIServerOutage: against a real kube-apiserver that is stopped and
// started again, the watcher keeps the last known pods and says the API
// is unreachable; once it can list and watch again (no object changed
// meanwhile) it says so within seconds, and changes flow again.
func TestAPIServerOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd and kube-apiserver")
	}
	s := kubetest.Start(t)
	s.CreateNamespace(t, "payments", nil)
	s.CreatePod(t, kubetest.Pod{Namespace: "payments", Name: "c1", Labels: map[string]string{"app": "checkout"}, Node: "node-a",
		IPs: []netip.Addr{netip.MustParseAddr("10.244.1.5")}})
	client, err := kubernetes.NewForConfig(s.Config())
	if err != nil {
		t.Fatal(err)
	}
	h := start(t, mustPolicy(t, testPolicy), "node-a", client)
	h.waitFor("the pod", has("10.244.1.5", "checkout"))

	s.Stop()
	down := time.Now()
	st := h.waitStatus("the API unreachable", time.Minute, func(st Status) bool { return st.Unreachable })
	t.Logf("API server stopped: reported after %v: %+v", time.Since(down).Round(time.Millisecond), st)
	if !st.Synced || st.Since.Before(down) {
		t.Errorf("status %+v, want synced, failing since after %v", st, down)
	}
	if m := h.last(); !has("10.244.1.5", "checkout")(m) {
		t.Errorf("with the API down: %s, want the last known pods", describe(m))
	}

	s.Restart(t)
	back := time.Now()
	// Restart returns once the server is ready, with no object changed:
	// only a successful list or watch can clear the error. The dial
	// retries are at most dialRetryMax apart (plus jitter).
	h.waitStatus("no API error", 15*time.Second, func(st Status) bool { return st.APIError == "" })
	t.Logf("recovered %v after the restarted server was ready", time.Since(back).Round(time.Millisecond))
	s.SetPodLabels(t, "payments", "c1", map[string]string{"app": "web"})
	h.waitFor("the label change after the outage", has("10.244.1.5", "web"))
}
