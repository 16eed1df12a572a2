package policy

import (
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// History configures the decision history (internal/history): a durable
// per-day aggregate of every decision, which `fqdngate history` and
// `fqdngate suggest` read.
type History struct {
	// Enabled is true unless the policy says history: {enabled: false}.
	Enabled bool
	// Path is the SQLite file. Empty: the default location, which the
	// daemon resolves (history.DefaultPath).
	Path string
	// Retention is how long days are kept, a whole number of days.
	Retention time.Duration
	// MaxSize bounds the file's data in bytes: the oldest days go first.
	MaxSize int64
}

// Defaults of the history section.
const (
	DefaultHistoryRetention = 30 * 24 * time.Hour
	DefaultHistoryMaxSize   = 256 << 20
)

func defaultHistory() History {
	return History{Enabled: true, Retention: DefaultHistoryRetention, MaxSize: DefaultHistoryMaxSize}
}

// history decodes the history section into p.History.
func (d *decoder) history(n *yaml.Node, p *Policy) {
	d.mapping(n, "history",
		field{"enabled", d.boolean(&p.History.Enabled, "history.enabled")},
		field{"path", func(v *yaml.Node) {
			d.str(&p.History.Path, "history.path")(v)
			if v := d.deref(v); !isNull(v) && v.Kind == yaml.ScalarNode && strings.TrimSpace(v.Value) == "" {
				d.errorf(v, "history.path is empty; write a file path like /var/lib/fqdngate/history.db, omit the key for the default, or set history.enabled: false")
			}
		}},
		field{"retention", func(v *yaml.Node) {
			s, ok := d.scalar(v, "history.retention")
			if !ok {
				return
			}
			r, ok := parseDays(s)
			if !ok {
				d.errorf(v, "history.retention: %q is not a number of days; write it like 30d (at least 1d, at most 3650d)", s)
				return
			}
			p.History.Retention = r
		}},
		field{"max_size", func(v *yaml.Node) {
			s, ok := d.scalar(v, "history.max_size")
			if !ok {
				return
			}
			b, ok := ParseSize(s)
			if !ok || b < 1<<20 {
				d.errorf(v, "history.max_size: %q is not a size of at least 1MiB; write it like 256MiB or 2GiB", s)
				return
			}
			p.History.MaxSize = b
		}},
	)
}

// parseDays parses a retention: "30d", or a Go duration that is a whole
// number of days ("720h"), from 1 day to 3650.
func parseDays(s string) (time.Duration, bool) {
	const day = 24 * time.Hour
	var v time.Duration
	if n, ok := strings.CutSuffix(s, "d"); ok {
		i, err := strconv.Atoi(n)
		if err != nil {
			return 0, false
		}
		v = time.Duration(i) * day
	} else {
		var err error
		if v, err = time.ParseDuration(s); err != nil || v%day != 0 {
			return 0, false
		}
	}
	return v, v >= day && v <= 3650*day
}

// ParseSize parses a byte size: a whole number with an optional unit
// B, KB, MB, GB (powers of 1000) or KiB, MiB, GiB (powers of 1024).
func ParseSize(s string) (int64, bool) {
	units := []struct {
		suffix string
		mul    int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1}}
	mul := int64(1)
	for _, u := range units {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mul = n, u.mul
			break
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || n < 0 || n > (1<<50)/mul {
		return 0, false
	}
	return n * mul, true
}
