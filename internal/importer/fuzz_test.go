package importer

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzImport feeds arbitrary bytes to every dialect: a translation never
// panics, is deterministic, and its output is always the agreed policy
// shape.
func FuzzImport(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "*", "*.yaml"))
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		for d := range Dialects {
			f.Add(data, uint8(d))
		}
	}
	f.Add([]byte("kind: List\nitems: [{kind: List, items: []}]\n"), uint8(0))
	f.Add([]byte("a: &x [*x]\n"), uint8(1))
	f.Add([]byte("kind: NetworkPolicy\napiVersion: projectcalico.org/v3\nmetadata: {name: a}\nspec: {selector: \"a in {'x',\", egress: [{action: Allow}]}\n"), uint8(1))
	f.Fuzz(func(t *testing.T, data []byte, d uint8) {
		dialect := Dialect(int(d) % len(Dialects))
		in := []Input{{Name: "f.yaml", Data: data}}
		a := Import(dialect, in, Options{})
		b := Import(dialect, in, Options{})
		if render(a) != render(b) {
			t.Fatalf("two translations of the same input differ:\n%s\n---\n%s", render(a), render(b))
		}
		checkShape(t, a.Policy)
		for _, p := range a.Problems {
			if p.File != "f.yaml" || p.Msg == "" {
				t.Fatalf("problem without file or message: %+v", p)
			}
		}
	})
}

// FuzzCalicoSelector: the selector parser never panics, and an error's
// offset lies within the selector.
func FuzzCalicoSelector(f *testing.F) {
	for _, s := range []string{"", "all()", "app == 'x'", "has(a) && b in {'1', \"2\"}", "a || b", "!has(x)", "a in {", "a == 'x", "global()", "x starts with 'y'"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		reqs, err := parseCalicoSelector(s)
		if err != nil {
			se, ok := err.(*selError)
			if !ok || se.off < 0 || se.off > len(s) {
				t.Fatalf("parseCalicoSelector(%q): error %v with a bad offset", s, err)
			}
			return
		}
		for _, r := range reqs {
			if r.key == "" || (r.op != "has" && len(r.values) == 0) {
				t.Fatalf("parseCalicoSelector(%q): incomplete requirement %+v", s, r)
			}
		}
	})
}
