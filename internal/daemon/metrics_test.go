package daemon

import (
	"bufio"
	"fmt"
	"net/http"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"
)

// labelValue matches one label of a sample line of the text exposition.
var labelValue = regexp.MustCompile(`(\w+)="((?:[^"\\]|\\.)*)"`)

// TestMetricLabelValues: after denials and refusals, no label value that
// /metrics exposes holds a space (reasons are short snake_case labels; the
// human text stays in the audit line), and fqdngate_build_info says which
// build runs.
func TestMetricLabelValues(t *testing.T) {
	w, _, _ := startV1(t)
	w.resolves(w.v1.listen.dns, "new.example", none)
	w.proxyAnswers(w.v1.listen.proxy, "new.example")
	// A request the proxy refuses as malformed (not an absolute URI).
	conn, err := w.ns.Dial("tcp", "", w.v1.listen.proxy, wait)
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.SetDeadline(time.Now().Add(wait))
	fmt.Fprint(conn, "GET /relative HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, err := http.ReadResponse(bufio.NewReader(conn), nil); err != nil {
		t.Errorf("a malformed request got no response: %v", err)
	} else {
		resp.Body.Close()
	}
	conn.Close()

	admin := w.v1.listen.admin
	for series, want := range map[string]float64{
		`fqdngate_proxy_refusals_total{reason="policy"}`:                                                             1,
		fmt.Sprintf(`fqdngate_build_info{goversion=%q,revision="unknown",version="v0.0.0-test"}`, runtime.Version()): 1,
	} {
		if got := w.metric(admin, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	// The refusal of the malformed request is counted, under a label
	// without spaces, once the proxy has written its line.
	deadline := time.Now().Add(wait)
	for w.metric(admin, `fqdngate_proxy_refusals_total{reason="bad_request"}`) != 1 {
		if time.Now().After(deadline) {
			t.Error(`fqdngate_proxy_refusals_total{reason="bad_request"} never reached 1`)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	body, err := w.get(admin, "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		for _, m := range labelValue.FindAllStringSubmatch(line, -1) {
			if strings.ContainsAny(m[2], " \t") {
				t.Errorf("label %s has a value with a space: %s", m[1], line)
			}
		}
	}
}
