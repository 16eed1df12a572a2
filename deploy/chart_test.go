// Package deploy_test checks what deploy/ ships for Kubernetes: the Helm
// chart renders and lints, deploy/kubernetes/fqdngate.yaml is exactly the
// chart rendered with its defaults (one source, so the two cannot drift
// apart), and the agent asks the API for nothing more than it needs. The
// policies the manifests carry are loaded by internal/policy's
// TestShippedPolicies, which reads every manifest under deploy/.
package deploy_test

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/fqdngate/fqdngate/internal/policy"
)

var update = flag.Bool("update", false, "rewrite deploy/kubernetes/fqdngate.yaml from the chart")

const (
	chart    = "helm/fqdngate"
	rendered = "kubernetes/fqdngate.yaml"
)

// header opens the rendered manifest: it says where the file comes from,
// and creates the namespace helm install would be told to use.
const header = `# Generated from deploy/helm/fqdngate with its default values: edit the
# chart, then run go test ./deploy -update. Apply it with
#   kubectl apply -f deploy/kubernetes/fqdngate.yaml
# or install the chart: helm install fqdngate deploy/helm/fqdngate -n fqdngate
# docs/kubernetes.md walks through it.
apiVersion: v1
kind: Namespace
metadata:
  name: fqdngate
`

// helm finds the helm binary .ci/run installs (go install
// helm.sh/helm/v4/cmd/helm@v4.3.2). Without it the chart tests skip,
// except under CI, where a skip is a failure.
func helm(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("helm"); err == nil {
		return p
	}
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		p := filepath.Join(strings.TrimSpace(string(out)), "bin", "helm")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("helm is not installed; .ci/run installs it with go install helm.sh/helm/v4/cmd/helm@v4.3.2")
	}
	t.Skip("helm is not installed (go install helm.sh/helm/v4/cmd/helm@v4.3.2); skipping the chart tests")
	return ""
}

// render runs helm template on the chart with extra arguments.
func render(t *testing.T, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(helm(t), append([]string{"template", "fqdngate", chart, "--namespace", "fqdngate"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helm template %v: %v\n%s", args, err, stderr.String())
	}
	return out
}

// object is what the tests read of a rendered Kubernetes object.
type object struct {
	Kind     string `yaml:"kind"`
	Metadata struct {
		Name      string `yaml:"name"`
		Namespace string `yaml:"namespace"`
	} `yaml:"metadata"`
	Data  map[string]string `yaml:"data"`
	Rules []struct {
		APIGroups []string `yaml:"apiGroups"`
		Resources []string `yaml:"resources"`
		Verbs     []string `yaml:"verbs"`
	} `yaml:"rules"`
	RoleRef  struct{ Kind, Name string } `yaml:"roleRef"`
	Subjects []struct{ Kind, Name, Namespace string }
	Spec     struct {
		Template struct {
			Spec struct {
				ServiceAccountName string `yaml:"serviceAccountName"`
				HostNetwork        bool   `yaml:"hostNetwork"`
				Containers         []struct {
					Env []struct {
						Name      string `yaml:"name"`
						ValueFrom struct {
							FieldRef struct {
								FieldPath string `yaml:"fieldPath"`
							} `yaml:"fieldRef"`
						} `yaml:"valueFrom"`
					} `yaml:"env"`
					SecurityContext struct {
						Capabilities struct{ Drop, Add []string }
					} `yaml:"securityContext"`
					Resources struct {
						Requests map[string]string `yaml:"requests"`
						Limits   map[string]string `yaml:"limits"`
					} `yaml:"resources"`
					LivenessProbe  *struct{} `yaml:"livenessProbe"`
					ReadinessProbe *struct{} `yaml:"readinessProbe"`
				} `yaml:"containers"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

func objects(t *testing.T, manifest []byte) []object {
	t.Helper()
	var out []object
	dec := yaml.NewDecoder(bytes.NewReader(manifest))
	for {
		var o object
		err := dec.Decode(&o)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("rendered manifest: %v", err)
		}
		if o.Kind != "" {
			out = append(out, o)
		}
	}
}

func TestChartLints(t *testing.T) {
	out, err := exec.Command(helm(t), "lint", "--strict", chart).CombinedOutput()
	if err != nil {
		t.Fatalf("helm lint --strict: %v\n%s", err, out)
	}
}

// TestRenderedManifestIsTheChart: the plain manifest is the chart's
// rendering, byte for byte.
func TestRenderedManifestIsTheChart(t *testing.T) {
	want := header + string(render(t))
	if *update {
		if err := os.WriteFile(rendered, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(rendered)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Errorf("%s is not the chart rendered with its defaults; run go test ./deploy -update and commit the result", rendered)
	}
}

// TestAgentPermissions: the agent may get, list and watch pods and
// namespaces, through one binding to its own service account, and nothing
// else: no secrets, no writes.
func TestAgentPermissions(t *testing.T) {
	objs := objects(t, render(t))
	var roles, bindings []object
	var ds *object
	for i, o := range objs {
		switch o.Kind {
		case "Role", "ClusterRole":
			roles = append(roles, o)
		case "RoleBinding", "ClusterRoleBinding":
			bindings = append(bindings, o)
		case "DaemonSet":
			ds = &objs[i]
		}
	}
	if len(roles) != 1 || len(bindings) != 1 || ds == nil {
		t.Fatalf("want one role, one binding and a DaemonSet; got %d roles, %d bindings, daemonset %v", len(roles), len(bindings), ds != nil)
	}
	r := roles[0]
	if len(r.Rules) != 1 {
		t.Fatalf("role %s has %d rules, want 1", r.Metadata.Name, len(r.Rules))
	}
	rule := r.Rules[0]
	if !slices.Equal(rule.APIGroups, []string{""}) || !slices.Equal(rule.Resources, []string{"pods", "namespaces"}) || !slices.Equal(rule.Verbs, []string{"get", "list", "watch"}) {
		t.Errorf("role grants %+v; want get, list, watch on core pods and namespaces only", rule)
	}
	b := bindings[0]
	sa := ds.Spec.Template.Spec.ServiceAccountName
	if b.RoleRef.Name != r.Metadata.Name || len(b.Subjects) != 1 || b.Subjects[0].Kind != "ServiceAccount" || b.Subjects[0].Name != sa || b.Subjects[0].Namespace != "fqdngate" {
		t.Errorf("binding %+v does not tie role %s to the DaemonSet's service account %q", b, r.Metadata.Name, sa)
	}
	if sa == "" {
		t.Error("the DaemonSet runs as the default service account")
	}
	pod := ds.Spec.Template.Spec
	if !pod.HostNetwork || len(pod.Containers) != 1 {
		t.Fatalf("DaemonSet: hostNetwork %v, %d containers; want the node's network and one container", pod.HostNetwork, len(pod.Containers))
	}
	c := pod.Containers[0]
	if !slices.Equal(c.SecurityContext.Capabilities.Drop, []string{"ALL"}) || !slices.Equal(c.SecurityContext.Capabilities.Add, []string{"NET_ADMIN", "NET_BIND_SERVICE"}) {
		t.Errorf("capabilities %+v; want all dropped but NET_ADMIN and NET_BIND_SERVICE", c.SecurityContext.Capabilities)
	}
	nodeName := false
	for _, e := range c.Env {
		nodeName = nodeName || (e.Name == "NODE_NAME" && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName")
	}
	if !nodeName {
		t.Error("the container has no NODE_NAME from spec.nodeName: the agent would not know whose pods to follow")
	}
	if c.Resources.Requests["cpu"] == "" || c.Resources.Requests["memory"] == "" || c.Resources.Limits["memory"] == "" {
		t.Errorf("resources %+v; want cpu and memory requests and a memory limit", c.Resources)
	}
	if c.LivenessProbe == nil || c.ReadinessProbe == nil {
		t.Error("the container has no liveness or readiness probe")
	}
}

// TestChartValuesLoad: the policy the chart renders loads, with its
// defaults and with the values an operator changes.
func TestChartValuesLoad(t *testing.T) {
	t.Setenv("NODE_NAME", "node-1") // as the DaemonSet sets it from spec.nodeName
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"defaults", nil},
		{"enforce with nodelocal", []string{"--set", "mode=enforce", "--set", "dns.nodelocal=169.254.20.10"}},
		{"other release", []string{"--set", "listen.admin=127.0.0.1:9191"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var found bool
			for _, o := range objects(t, render(t, tc.args...)) {
				if o.Kind != "ConfigMap" {
					continue
				}
				for key, v := range o.Data {
					found = true
					if _, err := policy.Parse(o.Metadata.Name+":"+key, []byte(v)); err != nil {
						t.Errorf("the chart's policy does not load:\n%v\n%s", err, v)
					}
				}
			}
			if !found {
				t.Error("no ConfigMap with a policy rendered")
			}
		})
	}
}
