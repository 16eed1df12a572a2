package policy

import (
	"testing"
	"time"
)

func TestHistorySettings(t *testing.T) {
	const rule = "rules:\n  - name: x\n    to: example.com\n"
	for _, tt := range []struct {
		name, yaml string
		want       History
	}{
		{"default: on, 30 days, 256 MiB", "", History{Enabled: true, Retention: 30 * 24 * time.Hour, MaxSize: 256 << 20}},
		{"set", "history: {path: /tmp/h.db, retention: 7d, max_size: 1GiB}\n", History{Enabled: true, Path: "/tmp/h.db", Retention: 7 * 24 * time.Hour, MaxSize: 1 << 30}},
		{"hours that make days, decimal size", "history: {retention: 48h, max_size: 500MB}\n", History{Enabled: true, Retention: 48 * time.Hour, MaxSize: 500e6}},
		{"off", "history: {enabled: false}\n", History{Enabled: false, Retention: 30 * 24 * time.Hour, MaxSize: 256 << 20}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse("p.yaml", []byte(upstreams+tt.yaml+rule))
			if err != nil {
				t.Fatal(err)
			}
			if p.History != tt.want {
				t.Errorf("got %+v, want %+v", p.History, tt.want)
			}
		})
	}
}

// The history's mistakes, through the same checks as every other
// setting's (TestParseErrors).
func init() {
	errorCases = append(errorCases,
		errorCase{"history retention without unit", upstreams + "history:\n  retention: 30\n", 3, 14, []string{"history.retention", "write it like 30d"}},
		errorCase{"history retention not whole days", upstreams + "history:\n  retention: 36h\n", 3, 14, []string{"not a number of days"}},
		errorCase{"history retention zero", upstreams + "history:\n  retention: 0d\n", 3, 14, []string{"at least 1d"}},
		errorCase{"history max_size too small", upstreams + "history:\n  max_size: 10KiB\n", 3, 13, []string{"at least 1MiB", "256MiB"}},
		errorCase{"history max_size not a size", upstreams + "history:\n  max_size: big\n", 3, 13, []string{"history.max_size"}},
		errorCase{"history empty path", upstreams + "history:\n  path: \"\"\n", 3, 9, []string{"history.path is empty", "history.enabled: false"}},
		errorCase{"history unknown key", upstreams + "history:\n  retension: 7d\n", 3, 3, []string{`unknown key "retension" in history`, `did you mean "retention"?`}},
		errorCase{"history enabled not a bool", upstreams + "history:\n  enabled: maybe\n", 3, 12, []string{"history.enabled"}},
	)
}
