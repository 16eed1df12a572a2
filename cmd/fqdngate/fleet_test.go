package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/fqdngate/fqdngate/internal/testutil/etcdtest"
)

// fleetFiles writes a gateway's local file for the cluster c and returns
// its path and a directory for shared files.
func fleetFiles(t *testing.T, c *etcdtest.Cluster) (local, dir string) {
	t.Helper()
	dir = t.TempDir()
	var eps []string
	for _, e := range c.Endpoints() {
		eps = append(eps, fmt.Sprintf("%q", e))
	}
	local = filepath.Join(dir, "local.yaml")
	body := fmt.Sprintf("listen: {dns: \"\", proxy: \"\", admin: \"127.0.0.1:0\"}\ncluster:\n  etcd: {endpoints: [%s]}\n  prefix: /cli-test/\n  node: gw-cli\n", strings.Join(eps, ", "))
	if err := os.WriteFile(local, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return local, dir
}

func writeFile(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestPolicyPushHistoryRollback is the operator's round trip: a push that
// check refuses stores nothing, a good one lands, the same again changes
// nothing, history and show tell it, a rollback lands as a new revision,
// and check reads the shared half from etcd.
func TestPolicyPushHistoryRollback(t *testing.T) {
	c := etcdtest.Start(t, 3)
	local, dir := fleetFiles(t, c)
	bad := writeFile(t, dir, "bad.yaml", "dns: {upstreams: [192.0.2.53]}\nlisten: {admin: \"127.0.0.1:1\"}\nrules:\n  - name: web\n    to: [example.com]\n    ports: [0]\n")
	one := writeFile(t, dir, "one.yaml", "dns: {upstreams: [192.0.2.53]}\nrules:\n  - name: web\n    to: [example.com]\n")
	two := writeFile(t, dir, "two.yaml", "dns: {upstreams: [192.0.2.53]}\nrules:\n  - name: web\n    to: [example.com, example.org]\n")

	if _, errOut, code := runCLI(t, "check", "-c", local, "--shared", bad, "--host=false"); code != 1 ||
		!strings.Contains(errOut, bad+":2:1: listen is set on each gateway") || !strings.Contains(errOut, bad+":6:13: rule \"web\": port \"0\" is out of range") {
		t.Errorf("check --shared bad: exit %d\n%s", code, errOut)
	}
	if _, errOut, code := runCLI(t, "check", "-c", local); code != 1 || !strings.Contains(errOut, "no shared policy has been pushed yet") {
		t.Errorf("check before any push: exit %d\n%s", code, errOut)
	}
	if _, errOut, code := runCLI(t, "policy", "push", "-c", local, bad); code != 1 || !strings.Contains(errOut, "nothing pushed") {
		t.Errorf("push bad: exit %d\n%s", code, errOut)
	}
	out, errOut, code := runCLI(t, "policy", "push", "-c", local, "-m", "first", one)
	if code != 0 || !strings.HasPrefix(out, "revision 1 is current") {
		t.Fatalf("push one: exit %d %q\n%s", code, out, errOut)
	}
	// Flags after the file too.
	if out, errOut, code := runCLI(t, "policy", "push", one, "-c", local); code != 0 || !strings.HasPrefix(out, "unchanged: revision 1") {
		t.Errorf("push one again: exit %d %q\n%s", code, out, errOut)
	}
	if out, errOut, code := runCLI(t, "policy", "push", "-c", local, two); code != 0 || !strings.HasPrefix(out, "revision 2 is current") {
		t.Fatalf("push two: exit %d %q\n%s", code, out, errOut)
	}
	if out, errOut, code := runCLI(t, "check", "-c", local); code != 0 || !strings.Contains(out, "1 rules, 2 targets") || !strings.Contains(out, "shared policy shared revision 2") {
		t.Errorf("check with the shared half from etcd: exit %d %q\n%s", code, out, errOut)
	}
	// explain and run --dry-run read the shared half from etcd too, or
	// from --shared.
	if out, errOut, code := runCLI(t, "explain", "-c", local, "--from", "127.0.0.1", "--to", "example.org:443"); code != 0 || !strings.HasPrefix(out, "ALLOW") {
		t.Errorf("explain with revision 2: exit %d %q\n%s", code, out, errOut)
	}
	if out, _, code := runCLI(t, "explain", "-c", local, "--shared", one, "--from", "127.0.0.1", "--to", "example.org:443"); code != 1 || !strings.HasPrefix(out, "DENY") {
		t.Errorf("explain with --shared one.yaml: exit %d %q", code, out)
	}
	if out, errOut, code := runCLI(t, "run", "-c", local, "--dry-run"); code != 0 || !strings.Contains(out, "table inet") {
		t.Errorf("run --dry-run: exit %d %q\n%s", code, out, errOut)
	}
	if out, _, code := runCLI(t, "policy", "rollback", "-c", local, "1"); code != 0 || !strings.HasPrefix(out, "revision 3 is current") {
		t.Errorf("rollback 1: exit %d %q", code, out)
	}
	if out, _, code := runCLI(t, "policy", "show", "-c", local); code != 0 || !strings.Contains(out, "to: [example.com]\n") || strings.Contains(out, "example.org") {
		t.Errorf("show after the rollback: exit %d %q", code, out)
	}
	if out, _, code := runCLI(t, "policy", "show", "-c", local, "2"); code != 0 || !strings.Contains(out, "example.org") {
		t.Errorf("show 2: exit %d %q", code, out)
	}
	out, _, code = runCLI(t, "policy", "history", "-c", local)
	if code != 0 {
		t.Fatalf("history: exit %d", code)
	}
	for _, re := range []string{`(?m)^3 \* +\S+ +\S+ +[0-9a-f]{12} +one\.yaml +rollback to revision 1$`, `(?m)^2 +\S+ +\S+ +[0-9a-f]{12} +two\.yaml *$`, `(?m)^1 +\S+ +\S+ +[0-9a-f]{12} +one\.yaml +first$`} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("history does not match %s:\n%s", re, out)
		}
	}
	if _, errOut, code := runCLI(t, "policy", "rollback", "-c", local, "9"); code != 1 || !strings.Contains(errOut, "revision 9 does not exist") {
		t.Errorf("rollback 9: exit %d\n%s", code, errOut)
	}
	if _, _, code := runCLI(t, "policy", "rollback", "-c", local); code != 2 {
		t.Errorf("rollback without a revision: exit %d, want 2", code)
	}

	// No gateway has joined: nothing lags.
	out, _, code = runCLI(t, "fleet", "status", "-c", local, "--json")
	var rep struct {
		Current int64 `json:"current_revision"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &rep) != nil || rep.Current != 3 {
		t.Errorf("fleet status --json: exit %d %q", code, out)
	}
	// A gateway that joined and went is reported, and fails the command.
	cli := c.Client(t)
	if _, err := cli.Put(t.Context(), "/cli-test/members/gw-old", `{"node":"gw-old"}`); err != nil {
		t.Fatal(err)
	}
	if out, _, code := runCLI(t, "fleet", "status", "-c", local); code != 1 || !regexp.MustCompile(`(?m)^gw-old +gone `).MatchString(out) {
		t.Errorf("fleet status with a gone gateway: exit %d\n%s", code, out)
	}
	if out, errOut, code := runCLI(t, "fleet", "forget", "-c", local, "gw-old"); code != 0 {
		t.Errorf("fleet forget: exit %d %q %s", code, out, errOut)
	}
	if _, _, code := runCLI(t, "fleet", "status", "-c", local); code != 0 {
		t.Errorf("fleet status after forget: exit %d", code)
	}
}

// TestFleetCommandsNeedClusterSection: a standalone policy is no fleet
// gateway's local file.
func TestFleetCommandsNeedClusterSection(t *testing.T) {
	for _, args := range [][]string{
		{"policy", "history", "-c", "../../examples/quickstart.yaml"},
		{"fleet", "status", "-c", "../../examples/quickstart.yaml"},
	} {
		if _, errOut, code := runCLI(t, args...); code != 1 || !strings.Contains(errOut, "has no cluster section") {
			t.Errorf("%v: exit %d %q", args, code, errOut)
		}
	}
	if _, errOut, code := runCLI(t, "check", "-c", "../../examples/quickstart.yaml", "--shared", "x.yaml"); code != 1 || !strings.Contains(errOut, "--shared is for a fleet gateway's local file") {
		t.Errorf("check --shared on a standalone policy: exit %d %q", code, errOut)
	}
	for _, args := range [][]string{{"policy", "--help"}, {"fleet", "--help"}} {
		if out, _, code := runCLI(t, args...); code != 0 || !strings.Contains(out, "SYNOPSIS") {
			t.Errorf("%v: exit %d", args, code)
		}
	}
}

// TestCheckClusterCredentials: check reports the etcd credentials run
// could not load on this host, positioned at the cluster section; with
// --host=false it leaves them out, as it leaves out the state file.
func TestCheckClusterCredentials(t *testing.T) {
	dir := t.TempDir()
	notPEM := writeFile(t, dir, "not.pem", "not a certificate\n")
	local := writeFile(t, dir, "local.yaml", fmt.Sprintf("listen: {dns: \"\", proxy: \"\", admin: \"127.0.0.1:0\"}\ncluster:\n  etcd:\n    endpoints: [\"https://192.0.2.11:2379\"]\n    tls: {cert_file: %q, key_file: %q}\n", notPEM, notPEM))
	shared := writeFile(t, dir, "shared.yaml", "dns: {upstreams: [192.0.2.53]}\nrules:\n  - name: web\n    to: [example.com]\n")
	if _, errOut, code := runCLI(t, "check", "-c", local, "--shared", shared); code != 1 || !strings.Contains(errOut, local+":2:1: cluster.etcd.tls: loading the client certificate") {
		t.Errorf("check: exit %d\n%s", code, errOut)
	}
	if out, errOut, code := runCLI(t, "check", "-c", local, "--shared", shared, "--host=false"); code != 0 {
		t.Errorf("check --host=false: exit %d %q\n%s", code, out, errOut)
	}
}

// TestPolicyHistoryKeep: with cluster.history_keep: 2 each push keeps the
// newest two revisions; history lists them and says which were pruned,
// and a rollback to a pruned revision says it was pruned.
func TestPolicyHistoryKeep(t *testing.T) {
	c := etcdtest.Start(t, 3)
	local, dir := fleetFiles(t, c)
	body, err := os.ReadFile(local)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir, "local.yaml", string(body)+"  history_keep: 2\n")
	for i := range 4 {
		shared := writeFile(t, dir, "shared.yaml", fmt.Sprintf("dns: {upstreams: [192.0.2.53]}\nrules:\n  - name: web\n    to: [example.com]\n# %d\n", i))
		if out, errOut, code := runCLI(t, "policy", "push", "-c", local, shared); code != 0 || !strings.HasPrefix(out, fmt.Sprintf("revision %d is current", i+1)) {
			t.Fatalf("push %d: exit %d %q\n%s", i+1, code, out, errOut)
		}
	}
	out, _, code := runCLI(t, "policy", "history", "-c", local)
	if code != 0 || !regexp.MustCompile(`(?m)^4 \* `).MatchString(out) || !regexp.MustCompile(`(?m)^3 `).MatchString(out) ||
		regexp.MustCompile(`(?m)^[12] `).MatchString(out) || !strings.Contains(out, "revisions 1 to 2 were pruned: a push keeps the newest cluster.history_keep (2 with this file)") {
		t.Errorf("history keeping 2 of 4: exit %d\n%s", code, out)
	}
	if _, errOut, code := runCLI(t, "policy", "rollback", "-c", local, "2"); code != 1 || !strings.Contains(errOut, "shared revision 2 was pruned") || !strings.Contains(errOut, "from 3 on") {
		t.Errorf("rollback to a pruned revision: exit %d\n%s", code, errOut)
	}
	if _, errOut, code := runCLI(t, "policy", "show", "-c", local, "1"); code != 1 || !strings.Contains(errOut, "shared revision 1 was pruned") {
		t.Errorf("show a pruned revision: exit %d\n%s", code, errOut)
	}
	out, _, code = runCLI(t, "policy", "history", "-c", local, "--json")
	var h struct {
		Oldest int64 `json:"oldest_kept"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &h) != nil || h.Oldest != 3 {
		t.Errorf("history --json: exit %d %q", code, out)
	}
}
