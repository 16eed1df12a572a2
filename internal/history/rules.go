package history

import (
	"context"
	"fmt"
	"time"
)

// RuleHits is what the history says about the rules: the decisions each
// rule allowed, and the span of days it holds.
type RuleHits struct {
	// Rules maps each rule name that allowed something to its hits and
	// its last one.
	Rules map[string]RuleHit
	// FirstDay and LastDay are the oldest and newest days with any
	// decision ("" when there are none); Decisions counts them all.
	FirstDay, LastDay string
	Decisions         int64
}

// RuleHit is one rule's hits in the history.
type RuleHit struct {
	Hits     int64
	LastSeen time.Time
}

// RuleHits sums the history's hits by rule, from since's UTC day on (zero:
// every day kept). Only allowed decisions name a rule, so a rule missing
// from the result allowed nothing in those days.
func (s *Store) RuleHits(ctx context.Context, since time.Time) (RuleHits, error) {
	out := RuleHits{Rules: map[string]RuleHit{}}
	where, args := "", []any{}
	if !since.IsZero() {
		where, args = " WHERE day >= ?", []any{Day(since)}
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	var first, last *string
	var total *int64
	if err := s.db.QueryRowContext(ctx, "SELECT min(day), max(day), sum(hits) FROM decisions"+where, args...).Scan(&first, &last, &total); err != nil {
		return out, fmt.Errorf("reading history: %w", err)
	}
	if first != nil {
		out.FirstDay, out.LastDay = *first, *last
	}
	if total != nil {
		out.Decisions = *total
	}
	q := "SELECT rule, sum(hits), max(last_seen) FROM decisions WHERE rule != ''"
	if where != "" {
		q += " AND day >= ?"
	}
	rs, err := s.db.QueryContext(ctx, q+" GROUP BY rule", args...)
	if err != nil {
		return out, fmt.Errorf("reading history: %w", err)
	}
	defer rs.Close()
	for rs.Next() {
		var name string
		var hits, lastSeen int64
		if err := rs.Scan(&name, &hits, &lastSeen); err != nil {
			return out, fmt.Errorf("reading history: %w", err)
		}
		out.Rules[name] = RuleHit{Hits: hits, LastSeen: time.Unix(0, lastSeen).UTC()}
	}
	if err := rs.Err(); err != nil {
		return out, fmt.Errorf("reading history: %w", err)
	}
	return out, nil
}
