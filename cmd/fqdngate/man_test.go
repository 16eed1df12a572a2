package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/fqdngate/fqdngate/internal/manpage"
)

// usageCommands are the commands the usage's COMMANDS section lists.
func usageCommands(t *testing.T) []string {
	t.Helper()
	sec := usage[strings.Index(usage, "\nCOMMANDS\n"):]
	sec = sec[:strings.Index(sec, "\nEXIT STATUS\n")]
	var names []string
	for _, m := range regexp.MustCompile(`(?m)^    ([a-z]+)\s`).FindAllStringSubmatch(sec, -1) {
		names = append(names, m[1])
	}
	if len(names) < 5 {
		t.Fatalf("found only %v in the usage's COMMANDS", names)
	}
	return names
}

// render formats a page as man would show it, failing on any warning.
func render(t *testing.T, page string) string {
	t.Helper()
	groff, err := exec.LookPath("groff")
	if err != nil {
		t.Skip("groff is not installed (Debian package groff-base)")
	}
	cmd := exec.Command(groff, "-man", "-Tutf8", "-ww", "-rLL=100n")
	cmd.Stdin = strings.NewReader(page)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil || errb.Len() > 0 {
		t.Fatalf("groff: %v\n%s", err, errb.String())
	}
	// Strip overstriking (bold, underline) to plain text.
	return regexp.MustCompile(".\b").ReplaceAllString(out.String(), "")
}

// TestManHasEveryCommand: fqdngate(1) has a section for every command
// the usage lists and the CLI dispatches, with its synopsis and every
// option its --help prints.
func TestManHasEveryCommand(t *testing.T) {
	listed := usageCommands(t)
	var dispatched []string
	for _, c := range commands() {
		dispatched = append(dispatched, c.name)
	}
	if strings.Join(listed, " ") != strings.Join(dispatched, " ") {
		t.Errorf("usage lists %v, the CLI has %v", listed, dispatched)
	}
	out, _, code := runCLI(t, "man", "fqdngate")
	if code != 0 {
		t.Fatalf("man fqdngate: exit %d", code)
	}
	text := render(t, out)
	for _, c := range commands() {
		i := strings.Index(text, "\nFQDNGATE "+strings.ToUpper(c.name)+"\n")
		if i < 0 {
			t.Errorf("no section FQDNGATE %s in fqdngate(1)", strings.ToUpper(c.name))
			continue
		}
		sec := text[i:]
		if j := strings.Index(sec[1:], "\nFQDNGATE "); j >= 0 {
			sec = sec[:j]
		}
		if !strings.Contains(sec, "fqdngate "+c.name) {
			t.Errorf("section %s has no synopsis", c.name)
		}
		for _, f := range manpage.Flags(fullHelp(c)) {
			spelled := "--" + f.Name
			if len(f.Name) == 1 {
				spelled = "-" + f.Name
			}
			if !strings.Contains(sec, spelled) {
				t.Errorf("section %s lacks option %s", c.name, spelled)
			}
		}
	}
	if t.Failed() {
		t.Logf("rendered page:\n%s", text)
	}
}

// TestManPagesRender: both pages render without a warning, with groff
// and, where installed, with man -l as a user would read them.
func TestManPagesRender(t *testing.T) {
	dir := t.TempDir()
	for _, p := range []struct{ name, file, want string }{
		{"fqdngate", "fqdngate.1", "domain-name based egress control"},
		{"fqdngate-policy", "fqdngate-policy.5", "listen.admin"},
	} {
		out, _, code := runCLI(t, "man", p.name)
		if code != 0 {
			t.Fatalf("man %s: exit %d", p.name, code)
		}
		if text := render(t, out); !strings.Contains(text, p.want) {
			t.Errorf("%s: rendered page lacks %q", p.name, p.want)
		}
		file := filepath.Join(dir, p.file)
		if err := os.WriteFile(file, []byte(out), 0o644); err != nil {
			t.Fatal(err)
		}
		man, err := exec.LookPath("man")
		if err != nil {
			continue
		}
		cmd := exec.Command(man, "--warnings", "-l", file)
		cmd.Env = append(os.Environ(), "MANWIDTH=80", "MANPAGER=cat", "PAGER=cat")
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil || stderr.Len() > 0 {
			t.Errorf("man -l %s: %v\n%s", p.file, err, stderr.String())
		}
		if !strings.Contains(stdout.String(), strings.ToUpper(p.name)) {
			t.Errorf("man -l %s printed no header", p.file)
		}
	}
}

// TestPolicyPageHasEveryKey: every key the policy reference's tables
// document appears in fqdngate-policy(5).
func TestPolicyPageHasEveryKey(t *testing.T) {
	md, err := os.ReadFile("../../docs/policy.md")
	if err != nil {
		t.Fatal(err)
	}
	out, _, _ := runCLI(t, "man", "fqdngate-policy")
	text := render(t, out)
	keys := regexp.MustCompile("(?m)^\\| `([a-z_.]+)` \\|").FindAllStringSubmatch(string(md), -1)
	if len(keys) < 30 {
		t.Fatalf("found only %d keys in docs/policy.md", len(keys))
	}
	for _, k := range keys {
		if !strings.Contains(text, k[1]) {
			t.Errorf("fqdngate-policy(5) lacks %s", k[1])
		}
	}
}

// TestBashCompletion loads the generated script into a real bash and
// completes commands, subcommands, options and option values.
func TestBashCompletion(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("bash is not installed")
	}
	script, _, code := runCLI(t, "completion", "bash")
	if code != 0 {
		t.Fatalf("completion bash: exit %d", code)
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "fqdngate.bash")
	if err := os.WriteFile(file, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "policy.yaml"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	complete := func(words ...string) string {
		t.Helper()
		// COMP_WORDS as bash fills them; the last word is the one completed.
		var quoted []string
		for _, w := range words {
			quoted = append(quoted, "'"+w+"'")
		}
		prog := "source " + file + "\ncomplete -p fqdngate\nCOMP_WORDS=(" + strings.Join(quoted, " ") + ")\nCOMP_CWORD=" +
			string(rune('0'+len(words)-1)) + "\n_fqdngate\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n"
		cmd := exec.Command(bash, "--norc", "--noprofile", "-c", prog)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("bash: %v\n%s", err, out)
		}
		lines := strings.SplitN(string(out), "\n", 2)
		if !strings.Contains(lines[0], "-F _fqdngate fqdngate") {
			t.Fatalf("complete -p fqdngate: %q", lines[0])
		}
		return strings.TrimSpace(lines[1])
	}
	tests := []struct {
		words []string
		want  string
	}{
		{[]string{"fqdngate", "ch"}, "check"},
		{[]string{"fqdngate", "com"}, "completion"},
		{[]string{"fqdngate", "firewall", "re"}, "remove"},
		{[]string{"fqdngate", "completion", "f"}, "fish"},
		{[]string{"fqdngate", "run", "--dr"}, "--dry-run"},
		{[]string{"fqdngate", "explain", "--from-"}, "--from-pod"},
		{[]string{"fqdngate", "check", "-c", "pol"}, "policy.yaml"},
		{[]string{"fqdngate", "frobnicate", "x"}, ""},
	}
	for _, tt := range tests {
		if got := complete(tt.words...); got != tt.want {
			t.Errorf("%v: got %q, want %q", tt.words, got, tt.want)
		}
	}
}

// TestCompletionScripts: every shell's script names every command, and
// parses where that shell is installed.
func TestCompletionScripts(t *testing.T) {
	for _, sh := range []string{"bash", "zsh", "fish"} {
		script, _, code := runCLI(t, "completion", sh)
		if code != 0 {
			t.Fatalf("completion %s: exit %d", sh, code)
		}
		for _, c := range commands() {
			if !strings.Contains(script, c.name) {
				t.Errorf("%s completion lacks %s", sh, c.name)
			}
		}
		bin, err := exec.LookPath(sh)
		if err != nil {
			t.Logf("%s is not installed; its script is not parsed", sh)
			continue
		}
		cmd := exec.Command(bin, "-n")
		cmd.Stdin = strings.NewReader(script)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("%s -n: %v\n%s", sh, err, out)
		}
	}
	if _, errOut, code := runCLI(t, "completion", "tcsh"); code != 2 || !strings.Contains(errOut, "bash, zsh, fish") {
		t.Errorf("completion tcsh: exit %d, %q", code, errOut)
	}
}

// TestFishCompletion asks a real fish what it completes.
func TestFishCompletion(t *testing.T) {
	fish, err := exec.LookPath("fish")
	if err != nil {
		t.Skip("fish is not installed (Debian package fish)")
	}
	script, _, _ := runCLI(t, "completion", "fish")
	file := filepath.Join(t.TempDir(), "fqdngate.fish")
	if err := os.WriteFile(file, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	for line, want := range map[string]string{
		"fqdngate fir":       "firewall\tinspect or remove the nftables table fqdngate manages",
		"fqdngate firewall ": "remove\nshow",
		"fqdngate run --dr":  "--dry-run\tprint the nftables ruleset the policy would program, then exit",
	} {
		cmd := exec.Command(fish, "--no-config", "-c", "source "+file+"; complete -C '"+line+"'")
		cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("fish: %v\n%s", err, out)
		}
		if got := strings.TrimSpace(string(out)); got != want {
			t.Errorf("%q: got %q, want %q", line, got, want)
		}
	}
}
