package kube

import (
	"net/http"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"
)

// client is the clientset NewClient makes, with what its transport saw.
// client-go's reflector retries a watch that cannot connect (connection
// refused) by itself, with a backoff, without telling the informer's
// watch error handler: an API server that is down would never show in
// Status. The transport does see every failed request.
type client struct {
	*kubernetes.Clientset
	conn *connHealth
}

// connHealth records the outcome of the client's requests.
type connHealth struct {
	mu      sync.Mutex
	failing bool
	since   time.Time // when the current run of failures began
	msg     string    // the last failure
}

// status returns the last failure and when the failures began, while no
// request has succeeded since; "" otherwise.
func (h *connHealth) status() (string, time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.failing {
		return "", time.Time{}
	}
	return h.msg, h.since
}

func (h *connHealth) note(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err == nil {
		h.failing = false
		return
	}
	if !h.failing {
		h.failing, h.since = true, time.Now()
	}
	h.msg = err.Error()
}

// healthTransport notes, for each request, whether the API server
// answered at all (any HTTP status counts: refusals by the server are the
// informers' to report).
type healthTransport struct {
	next http.RoundTripper
	h    *connHealth
}

func (t healthTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(r)
	if r.Context().Err() == nil {
		t.h.note(err)
	}
	return resp, err
}
