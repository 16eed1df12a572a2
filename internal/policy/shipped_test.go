package policy

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// shippedPolicy is a policy the repository ships: a file, or a key of a
// Kubernetes ConfigMap in a manifest.
type shippedPolicy struct {
	where string // file, or file:key
	data  []byte
}

// manifest is what the test reads of a Kubernetes object.
type manifest struct {
	Kind     string `yaml:"kind"`
	Metadata struct{ Name string }
	Data     map[string]string `yaml:"data"`
	Spec     struct {
		Template struct {
			Spec struct {
				Containers []struct {
					Args         []string `yaml:"args"`
					VolumeMounts []struct {
						Name      string `yaml:"name"`
						MountPath string `yaml:"mountPath"`
						ReadOnly  bool   `yaml:"readOnly"`
					} `yaml:"volumeMounts"`
				} `yaml:"containers"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

// shipped reads every YAML file under deploy/ and examples/: a file with
// a top-level rules key is a policy, a ConfigMap's keys ending in .yaml
// are policies, and the manifests are returned for the checks that tie
// them to their policies.
func shipped(t *testing.T) (map[string][]shippedPolicy, map[string][]manifest) {
	t.Helper()
	policies := make(map[string][]shippedPolicy)
	manifests := make(map[string][]manifest)
	for _, root := range []string{"../../deploy", "../../examples"} {
		err := filepath.WalkDir(root, func(file string, e fs.DirEntry, err error) error {
			if err == nil && e.IsDir() && e.Name() == "helm" {
				return fs.SkipDir // templates, not YAML; deploy's chart test renders them into deploy/kubernetes
			}
			if err != nil || e.IsDir() || (!strings.HasSuffix(file, ".yaml") && !strings.HasSuffix(file, ".yml")) {
				return err
			}
			data, err := os.ReadFile(file)
			if err != nil {
				return err
			}
			dec := yaml.NewDecoder(bytes.NewReader(data))
			for {
				var doc map[string]any
				err := dec.Decode(&doc)
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Errorf("%s: %v", file, err)
					break
				}
				_, isObject := doc["kind"]
				if _, ok := doc["rules"]; ok && !isObject {
					policies[file] = append(policies[file], shippedPolicy{file, data})
					continue
				}
				if _, ok := doc["kind"]; !ok {
					continue
				}
				raw, _ := yaml.Marshal(doc)
				var m manifest
				if err := yaml.Unmarshal(raw, &m); err != nil {
					t.Errorf("%s: %v", file, err)
					continue
				}
				manifests[file] = append(manifests[file], m)
				if m.Kind != "ConfigMap" {
					continue
				}
				for key, v := range m.Data {
					if strings.HasSuffix(key, ".yaml") {
						policies[file] = append(policies[file], shippedPolicy{file + ":" + key, []byte(v)})
					}
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return policies, manifests
}

// TestShippedPolicies: every policy under deploy/ and examples/ loads as
// fqdngate check loads it, so what we ship is never refused; and a
// manifest's container finds its policy and can write its state file.
func TestShippedPolicies(t *testing.T) {
	// The node agent's DaemonSet sets it from spec.nodeName (deploy's
	// TestAgentPermissions checks that); a policy with a kubernetes
	// section does not load without it.
	t.Setenv("NODE_NAME", "node-1")
	policies, manifests := shipped(t)
	for _, want := range []string{"../../examples/quickstart.yaml", "../../examples/gateway.yaml", "../../deploy/kubernetes/fqdngate.yaml"} {
		if len(policies[want]) == 0 {
			t.Errorf("no policy found in %s", want)
		}
	}
	loaded := make(map[string]*Policy)
	for _, ps := range policies {
		for _, sp := range ps {
			p, err := Parse(sp.where, sp.data)
			if err != nil {
				t.Errorf("%s does not load:\n%v", sp.where, err)
				continue
			}
			loaded[sp.where] = p
		}
	}
	for file, ms := range manifests {
		for _, m := range ms {
			for _, c := range m.Spec.Template.Spec.Containers {
				cfg := ""
				for i, a := range c.Args {
					if (a == "-c" || a == "--config") && i+1 < len(c.Args) {
						cfg = c.Args[i+1]
					}
				}
				if cfg == "" {
					continue
				}
				p := loaded[file+":"+path.Base(cfg)]
				if p == nil {
					t.Errorf("%s: %s runs with -c %s, which no ConfigMap key of the file holds", file, m.Metadata.Name, cfg)
					continue
				}
				if p.Firewall.Backend != BackendNftables || p.Firewall.StateFile == "" {
					continue
				}
				dir, writable := path.Dir(p.Firewall.StateFile), false
				for _, vm := range c.VolumeMounts {
					writable = writable || (vm.MountPath == dir && !vm.ReadOnly)
				}
				if !writable {
					t.Errorf("%s: %s's policy keeps its state in %s, which no writable volume is mounted at (the root file system is read-only, and check and run refuse a missing directory)", file, m.Metadata.Name, dir)
				}
			}
		}
	}
}
