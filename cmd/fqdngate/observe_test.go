package main

import (
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/audit"
	"github.com/fqdngate/fqdngate/internal/policy"
)

// TestCheckObservePassed: an observe_until in the past is a positioned
// warning, with or without --strict; only --strict fails on it.
func TestCheckObservePassed(t *testing.T) {
	p := writePolicy(t, t.TempDir(), `sources:
  pay: {cidrs: [10.1.0.0/24], observe_until: 2020-01-31}
  ops: {cidrs: [10.2.0.0/24], observe_until: 2999-01-31}
rules:
  - name: api
    from: [pay, ops]
    to: [api.bank.example]
    ports: [443]
`)
	want := p + `:2:46: warning: sources.pay.observe_until 2020-01-31 has passed (2020-02-01T00:00:00Z), so the group is enforced`
	out, errOut, code := runCLI(t, "check", "--host=false", p)
	if code != 0 || !strings.Contains(out, ": ok") || !strings.Contains(errOut, want) || strings.Contains(errOut, "ops") {
		t.Errorf("check: code %d\nstdout %s\nstderr %s\nwant 0 and the warning %q", code, out, errOut, want)
	}
	_, errOut, code = runCLI(t, "check", "--strict", "--host=false", p)
	if code != 1 || !strings.Contains(errOut, want) || !strings.Contains(errOut, "1 warnings") {
		t.Errorf("check --strict: code %d\nstderr %s\nwant 1 and the warning", code, errOut)
	}
}

// TestCheckHistoryNeverHit: with --strict --history, a rule that allowed
// nothing in the history is a warning at the rule; rules that did are not.
func TestCheckHistoryNeverHit(t *testing.T) {
	dir := t.TempDir()
	p := writePolicy(t, dir, `rules:
  - name: api
    to: [api.example]
    ports: [443]
  - name: stale
    to: [old.example]
    ports: [443]
`)
	hist := filepath.Join(dir, "history.db")
	src := netip.MustParseAddr("192.0.2.7")
	day := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	allow := audit.Event{Component: audit.DNS, Source: src, Name: "api.example", QType: "A", Time: day,
		Decision: policy.Decision{Action: policy.Allow, Reason: policy.ReasonMatched, Rule: &policy.Rule{Name: "api"}}}
	deny := audit.Event{Component: audit.DNS, Source: src, Name: "old.example.net", QType: "A", Time: day.Add(24 * time.Hour),
		Decision: policy.Decision{Action: policy.Deny, Reason: policy.ReasonNoRule}}
	writeHistoryFile(t, hist, allow, allow, deny)

	_, errOut, code := runCLI(t, "check", "--strict", "--host=false", "--history", hist, p)
	want := p + `:5:5: warning: rule "stale" allowed nothing in the history (2026-12-01 to 2026-12-02, 3 decisions); if nothing needs it any more, remove it`
	if code != 1 || !strings.Contains(errOut, want) || strings.Contains(errOut, `rule "api"`) {
		t.Errorf("code %d, stderr:\n%s\nwant 1 and only %q", code, errOut, want)
	}

	empty := filepath.Join(dir, "empty.db")
	writeHistoryFile(t, empty)
	if _, errOut, code := runCLI(t, "check", "--strict", "--host=false", "--history", empty, p); code != 1 || !strings.Contains(errOut, "holds no decisions") || strings.Contains(errOut, `rule "stale"`) {
		t.Errorf("empty history: code %d, stderr:\n%s\nwant one warning that it holds no decisions", code, errOut)
	}
	if _, errOut, code := runCLI(t, "check", "--strict", "--host=false", "--history", filepath.Join(dir, "missing.db"), p); code != 1 || !strings.Contains(errOut, "reading the history") {
		t.Errorf("missing history: code %d, stderr:\n%s\nwant 1 and an error", code, errOut)
	}
	if _, errOut, code := runCLI(t, "check", "--host=false", "--history", hist, p); code != 2 || !strings.Contains(errOut, "add --strict") {
		t.Errorf("--history without --strict: code %d, stderr:\n%s\nwant 2", code, errOut)
	}
}
