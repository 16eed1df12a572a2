package main

import (
	"strings"
	"testing"
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
