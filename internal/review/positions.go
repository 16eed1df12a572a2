package review

import "gopkg.in/yaml.v3"

// filePositions are the nodes of the keys warnings point at.
type filePositions struct {
	rulesKey *yaml.Node
	rules    []rulePos
	sources  map[string]*yaml.Node
	users    map[string]*yaml.Node
}

type rulePos struct {
	node    *yaml.Node // the rule's mapping
	ports   *yaml.Node
	targets map[string]*yaml.Node
}

func (r rulePos) line() int {
	if r.node == nil {
		return 0
	}
	return r.node.Line
}

// target is the node of the target written raw, or the rule's.
func (r rulePos) target(raw string) *yaml.Node {
	if n := r.targets[raw]; n != nil {
		return n
	}
	return r.node
}

func (f filePositions) rule(i int) rulePos {
	if i < len(f.rules) {
		return f.rules[i]
	}
	return rulePos{}
}

// positions reads data again as YAML nodes; a part it cannot read has no
// positions, and its warnings point at the file.
func positions(data []byte) filePositions {
	f := filePositions{sources: map[string]*yaml.Node{}, users: map[string]*yaml.Node{}}
	var doc yaml.Node
	if yaml.Unmarshal(data, &doc) != nil || len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
		return f
	}
	top := doc.Content[0]
	for i := 0; i+1 < len(top.Content); i += 2 {
		k, v := top.Content[i], top.Content[i+1]
		switch k.Value {
		case "rules":
			f.rulesKey = k
			if v.Kind != yaml.SequenceNode {
				continue
			}
			for _, r := range v.Content {
				rp := rulePos{node: r, targets: map[string]*yaml.Node{}}
				if r.Kind == yaml.MappingNode {
					for j := 0; j+1 < len(r.Content); j += 2 {
						rk, rv := r.Content[j], r.Content[j+1]
						switch rk.Value {
						case "ports":
							rp.ports = rv
						case "to":
							if rv.Kind == yaml.ScalarNode {
								rp.targets[rv.Value] = rv
							}
							for _, t := range rv.Content {
								rp.targets[t.Value] = t
							}
						}
					}
				}
				f.rules = append(f.rules, rp)
			}
		case "sources", "users":
			if v.Kind != yaml.MappingNode {
				continue
			}
			m := f.sources
			if k.Value == "users" {
				m = f.users
			}
			for j := 0; j+1 < len(v.Content); j += 2 {
				m[v.Content[j].Value] = v.Content[j]
			}
		}
	}
	return f
}
