package importer

import (
	"strings"
	"testing"
)

// TestDeepNesting: nesting that yaml.v3 accepts is walked without trouble,
// and deeper nesting is a reported YAML error, not a crash.
func TestDeepNesting(t *testing.T) {
	for _, tc := range []struct {
		depth int
		want  string
	}{
		{9_000, "deep.yaml:3:7: CiliumNetworkPolicy default/x: spec must be a mapping; not translated"},
		{200_000, "deep.yaml:3:1: exceeded max depth of 10000; fix the YAML"},
	} {
		data := "kind: CiliumNetworkPolicy\nmetadata: {name: x}\nspec: " + strings.Repeat("[", tc.depth) + strings.Repeat("]", tc.depth) + "\n"
		res := Import(Cilium, []Input{{Name: "deep.yaml", Data: []byte(data)}}, Options{})
		if len(res.Problems) != 1 || !strings.HasPrefix(res.Problems[0].String(), tc.want) {
			t.Errorf("depth %d: got problems %v, want one starting %q", tc.depth, res.Problems, tc.want)
		}
	}
}
