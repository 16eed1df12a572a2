package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/fqdngate/fqdngate/internal/explain"
)

// defaultAdmin is the admin listener of a policy that names none
// (listen.admin's default).
const defaultAdmin = "http://127.0.0.1:15380"

// explainPod asks the daemon at admin to explain traffic from pod
// (namespace/name) to to: only the daemon knows which address the pod
// has and which groups it is in. code is the exit status when it is 0
// or more (the request failed), -1 otherwise.
func explainPod(ctx context.Context, admin, pod, to string, stderr io.Writer) (explain.Result, int) {
	u, err := url.Parse(strings.TrimSuffix(admin, "/") + "/v1/explain")
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		fmt.Fprintf(stderr, "fqdngate explain: --admin %q is not a URL like %s\n", admin, defaultAdmin)
		return explain.Result{}, 2
	}
	u.RawQuery = url.Values{"pod": {pod}, "to": {to}}.Encode()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		fmt.Fprintf(stderr, "fqdngate explain: %v\n", err)
		return explain.Result{}, 2
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintf(stderr, "fqdngate explain: asking the daemon for pod %s: %v; is fqdngate running with its admin listener at %s (--admin URL)?\n", pod, err, admin)
		return explain.Result{}, 1
	}
	defer resp.Body.Close()
	var body struct {
		explain.Result
		Error string `json:"error"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&body); err != nil {
		fmt.Fprintf(stderr, "fqdngate explain: reading %s: %s: %v\n", u.Redacted(), resp.Status, err)
		return explain.Result{}, 1
	}
	switch {
	case resp.StatusCode == http.StatusOK:
		return body.Result, -1
	case resp.StatusCode == http.StatusBadRequest || resp.StatusCode == http.StatusNotFound:
		// The question was wrong: no such pod, a malformed name or
		// destination, or a daemon that follows no pods.
		fmt.Fprintf(stderr, "fqdngate explain: %s\n", body.Error)
		return explain.Result{}, 2
	default:
		fmt.Fprintf(stderr, "fqdngate explain: the daemon at %s: %s: %s\n", admin, resp.Status, body.Error)
		return explain.Result{}, 1
	}
}
