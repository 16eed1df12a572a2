package main

import (
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestUnitHardening: the systemd unit waits for fqdngate's READY=1 and
// keeps the exposure systemd-analyze security computes at or below what
// the unit's comment explains is left.
func TestUnitHardening(t *testing.T) {
	const unit = "../../deploy/systemd/fqdngate.service"
	b, err := os.ReadFile(unit)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"\nType=notify\n", "\nExecReload=/bin/kill -HUP $MAINPID\n", "\nProtectKernelTunables=yes\n", "\nProtectKernelModules=yes\n", "\nPrivateMounts=yes\n"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("%s lacks %q", unit, strings.TrimSpace(want))
		}
	}
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed (Debian package systemd)")
	}
	out, err := exec.Command(sa, "security", "--offline=true", unit).CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no overall exposure in:\n%s", out)
	}
	if v, _ := strconv.ParseFloat(string(m[1]), 64); v > 1.9 {
		t.Errorf("exposure %v, want at most 1.9:\n%s", v, out)
	}
}
