package admin

import (
	"bytes"
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/policy"
)

func TestRulesAndObserve(t *testing.T) {
	y := strings.Replace(testPolicy, "  others: [10.9.0.0/24]\n", "  others: {cidrs: [10.9.0.0/24], observe_until: 2027-01-31}\n", 1)
	p, err := policy.Parse("test.yaml", []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	p.SetClock(func() time.Time { return time.Date(2027, 1, 2, 0, 0, 0, 0, time.UTC) })
	p.Rule("partner-db").Usage().Hit(time.Date(2027, 1, 1, 10, 0, 0, 0, time.UTC))
	p.Rule("partner-db").Usage().Hit(time.Date(2027, 1, 1, 11, 0, 0, 0, time.UTC))
	srv := httptest.NewServer(Handler(Config{Policy: func() *policy.Policy { return p }}))
	t.Cleanup(srv.Close)

	code, body := getCompact(t, srv.URL+"/v1/rules")
	want := `{"file":"test.yaml","rules":[` +
		`{"name":"bank-api","from":["payments"],"to":["api.bank.example","*.edge.bank.example"],"ports":["443/tcp","8000-8100/udp"],"hits":0,"last_hit":null},` +
		`{"name":"partner-db","from":[],"to":["203.0.113.0/24"],"ports":["5432/tcp"],"hits":2,"last_hit":"2027-01-01T11:00:00Z"}]}`
	if code != 200 || strings.TrimSpace(body) != want {
		t.Errorf("/v1/rules: %d\n got %s\nwant %s", code, body, want)
	}
	code, body = getCompact(t, srv.URL+"/v1/policy")
	if want := `"observe":[{"group":"others","until":"2027-02-01T00:00:00Z","written":"2027-01-31","observing":true}]`; code != 200 || !strings.Contains(body, want) {
		t.Errorf("/v1/policy: %d %s\nwant it to contain %s", code, body, want)
	}
}

// getCompact is get with the JSON body compacted.
func getCompact(t *testing.T, url string) (int, string) {
	t.Helper()
	code, body := get(t, url)
	var b bytes.Buffer
	if err := json.Compact(&b, []byte(body)); err != nil {
		t.Fatalf("%s: %v: %s", url, err, body)
	}
	return code, b.String()
}
