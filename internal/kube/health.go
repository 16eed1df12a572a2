package kube

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
)

// Retrying a dial to the API server. client-go's reflector backs off a
// failed list or watch up to 30 s with a jitter of 100 % (so up to a
// minute) and cannot be told otherwise through a shared informer; after
// an outage that would leave new pods without their groups for that
// long. A dial that fails never reached the server, so retrying it costs
// the server nothing: the list-watch below retries dials itself, between
// dialRetryMin and dialRetryMax (with up to 50 % jitter), and hands every
// other error (a refusal, 429, a timeout of a request the server got)
// to the reflector, whose backoff then applies.
const (
	dialRetryMin = 250 * time.Millisecond
	dialRetryMax = 2 * time.Second
)

// health is the condition of each informer's list and watch: failing
// from its first failed request until one succeeds again.
type health struct {
	mu sync.Mutex // guards following
	in [2]informerHealth
}

type informerHealth struct {
	failing     bool
	unreachable bool      // the last failure was a dial: the server was not reached
	since       time.Time // when the current run of failures began
	msg         string    // the last failure
}

// fail notes a failed list or watch of informer i, and reports whether
// it began a run of failures.
func (h *health) fail(i int, err error) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := &h.in[i]
	began := !s.failing
	if began {
		s.failing, s.since = true, time.Now()
	}
	s.msg, s.unreachable = err.Error(), dialFailed(err)
	return began
}

// ok notes a list or watch of informer i that the server answered with
// success, and returns how long the run of failures it ends lasted (0:
// there was none).
func (h *health) ok(i int) time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := &h.in[i]
	if !s.failing {
		return 0
	}
	d := time.Since(s.since)
	h.in[i] = informerHealth{}
	return d
}

// status fills st's API error fields from the failing informers: the
// earliest failure's start, and the first failing informer's error.
func (h *health) status(st *Status) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, s := range h.in {
		if !s.failing {
			continue
		}
		if st.APIError == "" {
			st.APIError, st.Unreachable = s.msg, s.unreachable
		}
		if st.Since.IsZero() || s.since.Before(st.Since) {
			st.Since = s.since
		}
	}
}

// dialFailed reports whether err is a failure to connect to the API
// server at all (refused, no route, dial timeout): the request never
// reached it.
func dialFailed(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// listWatch is informer i's list and watch: list and watch the objects,
// noting each outcome in w's health and retrying failed dials (above).
func (w *Watcher) listWatch(i int, list func(context.Context, metav1.ListOptions) (runtime.Object, error), watchf func(context.Context, metav1.ListOptions) (watch.Interface, error)) *cache.ListWatch {
	return &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return call(ctx, w, i, func(ctx context.Context) (runtime.Object, error) { return list(ctx, o) })
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return call(ctx, w, i, func(ctx context.Context) (watch.Interface, error) { return watchf(ctx, o) })
		},
	}
}

// call calls f until it succeeds, fails other than by a dial, or ctx
// ends, noting every outcome.
func call[T any](ctx context.Context, w *Watcher, i int, f func(context.Context) (T, error)) (T, error) {
	delay := dialRetryMin
	for {
		v, err := f(ctx)
		if ctx.Err() != nil {
			return v, err // stopping: not the API server's failure
		}
		if err == nil {
			w.noteOK(i)
			return v, nil
		}
		w.noteFailure(i, err)
		if !dialFailed(err) {
			return v, err
		}
		t := time.NewTimer(delay + rand.N(delay/2))
		select {
		case <-ctx.Done():
			t.Stop()
			return v, err
		case <-t.C:
		}
		delay = min(2*delay, dialRetryMax)
	}
}

var informerNames = [2]string{"pods", "namespaces"}

func (w *Watcher) noteFailure(i int, err error) {
	if w.health.fail(i, err) {
		w.log.Warn("kubernetes API: listing or watching failed; keeping the last known pods", "informer", informerNames[i], "err", err)
	}
}

func (w *Watcher) noteOK(i int) {
	if d := w.health.ok(i); d > 0 {
		w.log.Info("kubernetes API: listing or watching works again", "informer", informerNames[i], "failed_for", d.Round(time.Millisecond))
	}
}
