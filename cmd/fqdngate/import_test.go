package main

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func TestImport(t *testing.T) {
	td := "../../internal/importer/testdata"
	tests := []struct {
		name     string
		args     []string
		code     int
		stdout   []string // substrings
		stderr   *regexp.Regexp
		noStderr bool
	}{
		{
			name:     "everything translated",
			args:     []string{"import", "npep", filepath.Join(td, "npep/basic.yaml")},
			code:     0,
			stdout:   []string{"  allow-apis:\n    kubernetes:\n", "  - name: allow-apis-stripe\n    from: [allow-apis]\n    to: [api.stripe.com, \"**.stripe.com\"]\n    ports: [443, 8000-8100, 443/udp]\n"},
			noStderr: true,
		},
		{
			name:   "untranslatable parts listed with positions, exit 1",
			args:   []string{"import", "cilium", filepath.Join(td, "cilium/untranslatable.yaml")},
			code:   1,
			stdout: []string{"  - name: shop-web-egress0\n", "to: [ok.example.org]\n"},
			stderr: regexp.MustCompile(`(?m)^\.\./\.\./internal/importer/testdata/cilium/untranslatable\.yaml:14:30: CiliumNetworkPolicy shop/web: spec\.egress\[0\]\.toFQDNs\[0\]\.matchPattern: "api-\*\.example\.com": '\*' inside a name`),
		},
		{
			name:   "several files, a set in one and its policy in another",
			args:   []string{"import", "calico", "-n", "payments", filepath.Join(td, "calico/basic.yaml"), filepath.Join(td, "calico/untranslatable.yaml")},
			code:   1,
			stdout: []string{"  - name: payments-allow-apis-egress2\n", "  - name: shop-web-egress0\n"},
			stderr: regexp.MustCompile(`translated 5 rules for 3 source groups; 24 parts not \(listed above\)\n$`),
		},
		{
			name:   "wrong dialect for the file",
			args:   []string{"import", "npep", filepath.Join(td, "cilium/basic.yaml")},
			code:   1,
			stdout: []string{"# Nothing was translated.\n"},
			stderr: regexp.MustCompile(`basic\.yaml:4:7: kind CiliumNetworkPolicy is read by "fqdngate import cilium", not npep; skipped`),
		},
		{name: "missing file", args: []string{"import", "cilium", "/nonexistent/cnp.yaml"}, code: 1, stderr: regexp.MustCompile(`no such file`)},
		{name: "no dialect", args: []string{"import"}, code: 2},
		{name: "unknown dialect", args: []string{"import", "istio", "x.yaml"}, code: 2, stderr: regexp.MustCompile(`use cilium, calico, npep`)},
		{name: "no files", args: []string{"import", "calico"}, code: 2, stderr: regexp.MustCompile(`give the files`)},
		{name: "help", args: []string{"import", "--help"}, code: 0, stdout: []string{"fqdngate import cilium|calico|npep"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := runCLI(t, tc.args...)
			if code != tc.code {
				t.Errorf("got exit %d, want %d; stderr:\n%s", code, tc.code, errOut)
			}
			for _, s := range tc.stdout {
				if !strings.Contains(out, s) {
					t.Errorf("stdout lacks %q:\n%s", s, out)
				}
			}
			if tc.stderr != nil && !tc.stderr.MatchString(errOut) {
				t.Errorf("stderr does not match %s:\n%s", tc.stderr, errOut)
			}
			if tc.noStderr && errOut != "" {
				t.Errorf("got stderr %q, want none", errOut)
			}
		})
	}
}

// TestImportStdinBinary runs the built binary as kubectl get -o yaml |
// fqdngate import would: a List on standard input.
func TestImportStdinBinary(t *testing.T) {
	list := `apiVersion: v1
kind: List
items:
  - apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: api, namespace: shop}
    spec:
      endpointSelector: {matchLabels: {app: api}}
      egress:
        - toFQDNs: [{matchPattern: "*.example.com"}]
          toPorts: [{ports: [{port: "443", protocol: TCP}]}]
`
	cmd := exec.Command(binary, "import", "cilium", "-")
	cmd.Stdin = strings.NewReader(list)
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		t.Fatalf("fqdngate import cilium -: %v; stderr:\n%s", err, errOut.String())
	}
	want := "  # -:10:11: CiliumNetworkPolicy shop/api spec.egress[0]\n  - name: shop-api-egress0\n    from: [shop-api]\n    to: [\"*.example.com\"]\n    ports: [443]\n"
	if !strings.Contains(out.String(), want) {
		t.Errorf("stdout lacks\n%s\ngot:\n%s", want, out.String())
	}
}
