package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
)

var (
	builtOnce sync.Once
	builtDeb  string
	buildErr  string
)

// build builds fqdngate as released (static, stamped) and packages it,
// once for all the tests.
func build(t *testing.T) string {
	t.Helper()
	builtOnce.Do(func() { builtDeb, buildErr = buildDeb() })
	if buildErr != "" {
		t.Fatal(buildErr)
	}
	return builtDeb
}

func buildDeb() (string, string) {
	dir, err := os.MkdirTemp("", "fqdngate-deb-test")
	if err != nil {
		return "", err.Error()
	}
	bin := filepath.Join(dir, "fqdngate")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w -X main.version=v1.2.3-4-gabcdef0 -X main.revision=0123456789abcdef0123456789abcdef01234567", "-o", bin, "./cmd/fqdngate")
	cmd.Dir = "../.."
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Sprintf("go build: %v\n%s", err, out)
	}
	deb, err := Build(Options{Binary: bin, Repo: "../..", Version: "v1.2.3-4-gabcdef0", Arch: "amd64", Out: dir})
	if err != nil {
		return "", err.Error()
	}
	return deb, ""
}

func TestMain(m *testing.M) {
	code := m.Run()
	if builtDeb != "" {
		os.RemoveAll(filepath.Dir(builtDeb))
	}
	os.Exit(code)
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestDebVersion(t *testing.T) {
	for in, want := range map[string]string{
		"v1.2.3":                  "1.2.3",
		"v1.2.3-4-gabcdef0":       "1.2.3+4.gabcdef0",
		"v1.2.3-4-gabcdef0-dirty": "1.2.3+4.gabcdef0.dirty",
		"9b428ee":                 "0.0.0+git.9b428ee",
		"9b428ee-dirty":           "0.0.0+git.9b428ee.dirty",
		"dev":                     "0.0.0+git.dev",
	} {
		if got := debVersion(in); got != want {
			t.Errorf("debVersion(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestPackageContents reads the .deb with dpkg-deb: every file the unit
// and the docs promise, the policy as a conffile, scripts that start
// nothing.
func TestPackageContents(t *testing.T) {
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		t.Skip("dpkg-deb is not installed (Debian package dpkg)")
	}
	deb := build(t)
	if !strings.HasSuffix(deb, "fqdngate_1.2.3+4.gabcdef0_amd64.deb") {
		t.Errorf("package file %s", deb)
	}
	contents := run(t, "dpkg-deb", "--contents", deb)
	for _, p := range []string{Bin, Unit, Policy, Man1, Man5, Bash, Zsh, Fish, DocDir + "/policy.md", DocDir + "/examples/gateway.yaml"} {
		if !strings.Contains(contents, " ."+p+"\n") {
			t.Errorf("package lacks %s:\n%s", p, contents)
		}
	}
	if !regexp.MustCompile(`-rwxr-xr-x root/root +\d+ .* \./usr/bin/fqdngate\n`).MatchString(contents) {
		t.Errorf("%s is not root's and executable:\n%s", Bin, contents)
	}
	ctl := t.TempDir()
	run(t, "dpkg-deb", "--control", deb, ctl)
	if b, _ := os.ReadFile(filepath.Join(ctl, "conffiles")); strings.TrimSpace(string(b)) != Policy {
		t.Errorf("conffiles = %q, want %s", b, Policy)
	}
	for _, s := range []string{"postinst", "prerm", "postrm"} {
		b, err := os.ReadFile(filepath.Join(ctl, s))
		if err != nil {
			t.Fatal(err)
		}
		for _, bad := range []string{"start", "enable", "restart"} {
			for _, l := range strings.Split(string(b), "\n") {
				l = strings.TrimSpace(l)
				if strings.HasPrefix(l, "systemctl") && strings.Contains(l, " "+bad) {
					t.Errorf("%s runs %q: installing must start nothing", s, strings.TrimSpace(l))
				}
			}
		}
	}
}

// TestInstall installs the package into this machine with dpkg -i, as
// root (CI runs it; elsewhere it skips), checks what the unit expects is
// where it expects it, runs the installed fqdngate, and removes the
// package again.
func TestInstall(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI=true but not root: the install test must run")
		}
		t.Skip("dpkg -i needs root; CI runs this as root")
	}
	if _, err := exec.LookPath("dpkg"); err != nil {
		t.Skip("dpkg is not installed")
	}
	if out, err := exec.Command("dpkg-query", "-W", "-f", "${Status}", "fqdngate").Output(); err == nil && strings.Contains(string(out), "installed") {
		t.Skip("a fqdngate package is already installed on this machine; not replacing it")
	}
	deb := build(t)
	t.Cleanup(func() {
		_ = exec.Command("dpkg", "--purge", "fqdngate").Run()
	})
	out := run(t, "dpkg", "-i", deb)
	if !strings.Contains(out, "installed but not started") {
		t.Errorf("postinst did not say it started nothing:\n%s", out)
	}

	// The unit runs what the package installed, with the policy it installed.
	unit, err := os.ReadFile(Unit)
	if err != nil {
		t.Fatal(err)
	}
	var execs []string
	sc := bufio.NewScanner(strings.NewReader(string(unit)))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok && strings.HasPrefix(k, "Exec") {
			execs = append(execs, v)
		}
	}
	if len(execs) < 3 {
		t.Fatalf("unit has %d Exec lines:\n%s", len(execs), unit)
	}
	for _, e := range execs {
		f := strings.Fields(e)
		if fi, err := os.Stat(f[0]); err != nil || fi.Mode()&0o111 == 0 {
			t.Errorf("unit runs %s, which is not an installed executable: %v", f[0], err)
		}
		for i, a := range f {
			if a == "-c" && f[i+1] != Policy {
				t.Errorf("unit runs %s with policy %s, the package installs %s", f[0], f[i+1], Policy)
			}
		}
	}
	if out := run(t, Bin, "version"); !strings.HasPrefix(out, "fqdngate v1.2.3-4-gabcdef0") {
		t.Errorf("%s version: %q", Bin, out)
	}
	// The installed policy is one the daemon accepts, as ExecStartPre checks.
	if out := run(t, Bin, "check", "-c", Policy); !strings.Contains(out, "ok") {
		t.Errorf("check %s: %q", Policy, out)
	}
	if sa, err := exec.LookPath("systemd-analyze"); err == nil {
		// verify checks the binaries and that man:fqdngate(1) resolves.
		if out, err := exec.Command(sa, "verify", Unit).CombinedOutput(); err != nil || len(strings.TrimSpace(string(out))) > 0 {
			t.Errorf("systemd-analyze verify %s: %v\n%s", Unit, err, out)
		}
	}
	if man, err := exec.LookPath("man"); err == nil {
		cmd := exec.Command(man, "-w", "fqdngate-policy")
		if out, err := cmd.CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != Man5 {
			t.Errorf("man -w fqdngate-policy: %v %q, want %s", err, out, Man5)
		}
	}
	// Nothing started: no process runs the installed binary.
	procs, _ := filepath.Glob("/proc/[0-9]*/exe")
	for _, p := range procs {
		if exe, err := os.Readlink(p); err == nil && exe == Bin {
			t.Errorf("installing started %s (%s)", Bin, p)
		}
	}

	run(t, "dpkg", "-r", "fqdngate")
	if _, err := os.Stat(Bin); !os.IsNotExist(err) {
		t.Errorf("%s still there after dpkg -r: %v", Bin, err)
	}
	// A removed (not purged) package keeps its edited conffile.
	if _, err := os.Stat(Policy); err != nil {
		t.Errorf("dpkg -r removed the conffile %s: %v", Policy, err)
	}
	run(t, "dpkg", "--purge", "fqdngate")
	if _, err := os.Stat(Policy); !os.IsNotExist(err) {
		t.Errorf("%s still there after purge: %v", Policy, err)
	}
}
