package main

import (
	"bytes"
	"fmt"
	"os/exec"
	"strings"
	"testing"
)

// TestCheckForms: the policy as -c, as the argument, and from standard
// input; --strict's positioned warnings and exit status.
func TestCheckForms(t *testing.T) {
	dir := t.TempDir()
	shadowed := `sources: {pay: [10.1.0.0/24], office: [10.2.0.0/24]}
rules:
  - name: all-bank
    to: ["**.bank.example"]
  - name: pay-api
    from: [pay]
    to: [api.bank.example]
`
	p := writePolicy(t, dir, shadowed)
	var many strings.Builder
	many.WriteString("firewall: {backend: nftables}\nrules:\n")
	for i := range 4001 {
		fmt.Fprintf(&many, "  - {name: r%d, to: [r%d.example]}\n", i, i)
	}
	manyRules := writePolicy(t, t.TempDir(), many.String())
	tests := []struct {
		name    string
		args    []string
		stdin   string
		code    int
		out     string
		errWant []string
	}{
		{"flag", []string{"-c", p}, "", 0, p + ": ok: 2 rules", nil},
		{"argument", []string{p}, "", 0, p + ": ok: 2 rules", nil},
		{"argument after flags", []string{"--host=false", p}, "", 0, p + ": ok", nil},
		{"stdin", []string{"-"}, shadowed, 0, "<stdin>: ok: 2 rules", nil},
		{"stdin with errors", []string{"-"}, "rules:\n  - name: x\n    to: [\"*.com\"]\n", 1, "", []string{"<stdin>:3:"}},
		{"strict", []string{"--strict", p}, "", 1, p + ": ok", []string{
			p + `:1:31: warning: source group "office" is named in no rule's from`,
			p + `:5:5: warning: rule "pay-api" allows nothing rule "all-bank" (line 3) does not already allow to every source`,
			"2 warnings",
		}},
		{"strict stdin", []string{"--strict", "-"}, shadowed, 1, "<stdin>: ok", []string{"<stdin>:5:5: warning: rule \"pay-api\""}},
		{"strict clean", []string{"--strict", "../../examples/quickstart.yaml"}, "", 0, "ok", nil},
		{"strict gateway example", []string{"--strict", "--host=false", "../../examples/gateway.yaml"}, "", 0, "ok", nil},
		{"too many for the kernel", []string{"--host=false", manyRules}, "", 0, "ok: 4001 rules", []string{manyRules + ": warning: firewall.backend nftables with 4001 rules"}},
		{"twice", []string{"-c", p, p}, "", 2, "", []string{"give the policy once"}},
		{"none", nil, "", 2, "", []string{"give the policy file"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The real binary, so standard input is a real pipe.
			cmd := exec.Command(binary, append([]string{"check"}, tt.args...)...)
			cmd.Stdin = strings.NewReader(tt.stdin)
			var out, errb bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &errb
			err := cmd.Run()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != tt.code || !strings.Contains(out.String(), tt.out) {
				t.Errorf("exit %d, stdout %q; want %d and %q; stderr:\n%s", code, out.String(), tt.code, tt.out, errb.String())
			}
			for _, w := range tt.errWant {
				if !strings.Contains(errb.String(), w) {
					t.Errorf("stderr lacks %q:\n%s", w, errb.String())
				}
			}
		})
	}
}
