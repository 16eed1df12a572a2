package kubetest

import (
	"errors"
	"io"
	"os"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// ShippedAgentRules returns the rules of the first ClusterRole in the
// manifest at path (deploy/kubernetes/fqdngate.yaml, relative to the
// test's package), so that tests give the agent exactly the permissions
// users install.
func ShippedAgentRules(t testing.TB, path string) []rbacv1.PolicyRule {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec := utilyaml.NewYAMLOrJSONDecoder(f, 4096)
	for {
		var role rbacv1.ClusterRole
		if err := dec.Decode(&role); err != nil {
			if errors.Is(err, io.EOF) {
				t.Fatalf("%s has no ClusterRole", path)
			}
			t.Fatalf("%s: %v", path, err)
		}
		if role.Kind == "ClusterRole" {
			return role.Rules
		}
	}
}
