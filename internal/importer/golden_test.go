package importer

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

var update = flag.Bool("update", false, "rewrite the golden files from the current output")

// TestGolden translates each testdata/<dialect>/*.yaml and compares the
// policy fragment and the problems with the .golden file beside it.
func TestGolden(t *testing.T) {
	for _, d := range Dialects {
		dialect, err := ParseDialect(d)
		if err != nil {
			t.Fatal(err)
		}
		files, err := filepath.Glob(filepath.Join("testdata", d, "*.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		if len(files) == 0 {
			t.Errorf("no testdata/%s/*.yaml", d)
		}
		for _, file := range files {
			t.Run(strings.TrimSuffix(filepath.ToSlash(file), ".yaml"), func(t *testing.T) {
				data, err := os.ReadFile(file)
				if err != nil {
					t.Fatal(err)
				}
				name := filepath.Base(file)
				res := Import(dialect, []Input{{Name: name, Data: data}}, Options{})
				got := render(res)
				checkShape(t, res.Policy)
				golden := strings.TrimSuffix(file, ".yaml") + ".golden"
				if *update {
					if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
						t.Fatal(err)
					}
					return
				}
				want, err := os.ReadFile(golden)
				if err != nil {
					t.Fatalf("%v (run go test -update to create it)", err)
				}
				if got != string(want) {
					t.Errorf("output differs from %s (go test -update rewrites it):\n--- got\n%s\n--- want\n%s", golden, got, want)
				}
			})
		}
	}
}

// render is a translation as the golden files hold it: the fragment, then
// the problems as the CLI prints them.
func render(res Result) string {
	var b strings.Builder
	b.WriteString(res.Policy)
	fmt.Fprintf(&b, "#### problems (%d)\n", len(res.Problems))
	for _, p := range res.Problems {
		b.WriteString(p.String() + "\n")
	}
	return b.String()
}

// The agreed shape of the policy's kubernetes sources and of rules, decoded
// strictly: an output with another key or type fails here, before it can
// fail in fqdngate check.
type (
	shapeSelector struct {
		MatchLabels      map[string]string `yaml:"matchLabels"`
		MatchExpressions []struct {
			Key      string   `yaml:"key"`
			Operator string   `yaml:"operator"`
			Values   []string `yaml:"values"`
		} `yaml:"matchExpressions"`
	}
	shapeGroup struct {
		Kubernetes struct {
			Namespaces        []string       `yaml:"namespaces"`
			NamespaceSelector *shapeSelector `yaml:"namespace_selector"`
			PodSelector       *shapeSelector `yaml:"pod_selector"`
		} `yaml:"kubernetes"`
	}
	shapePolicy struct {
		Sources map[string]shapeGroup `yaml:"sources"`
		Rules   []struct {
			Name  string   `yaml:"name"`
			From  []string `yaml:"from"`
			To    []string `yaml:"to"`
			Ports []string `yaml:"ports"`
		} `yaml:"rules"`
	}
)

func checkShape(t testing.TB, text string) {
	t.Helper()
	var p shapePolicy
	dec := yaml.NewDecoder(strings.NewReader(text))
	dec.KnownFields(true)
	if err := dec.Decode(&p); err != nil && err.Error() != "EOF" {
		t.Fatalf("output is not the agreed policy shape: %v\n%s", err, text)
	}
	for _, r := range p.Rules {
		if len(r.To) == 0 || len(r.Ports) == 0 || len(r.From) != 1 {
			t.Errorf("rule %s: want to, ports and one from, got %+v", r.Name, r)
		}
		if _, ok := p.Sources[r.From[0]]; !ok {
			t.Errorf("rule %s: from %s is not a source in the output", r.Name, r.From[0])
		}
	}
}
