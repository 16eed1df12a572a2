package importer

import (
	"fmt"
	"sort"
	"strings"
)

// Dialect is the tool whose policies are read.
type Dialect int

const (
	Cilium Dialect = iota // CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy
	Calico                // (Global)NetworkPolicy, (Global)NetworkSet
	NPEP                  // ClusterNetworkPolicy, AdminNetworkPolicy
)

// Dialects lists the dialect names ParseDialect accepts, in order.
var Dialects = []string{"cilium", "calico", "npep"}

func (d Dialect) String() string {
	if int(d) < len(Dialects) {
		return Dialects[d]
	}
	return fmt.Sprintf("Dialect(%d)", int(d))
}

// ParseDialect returns the dialect called name.
func ParseDialect(name string) (Dialect, error) {
	for i, n := range Dialects {
		if n == name {
			return Dialect(i), nil
		}
	}
	return 0, fmt.Errorf("unknown dialect %q; use %s", name, strings.Join(Dialects, ", "))
}

// Input is one file to translate.
type Input struct {
	Name string // as the user gave it; problems and comments name it
	Data []byte
}

// Options tune a translation. The zero value is useful.
type Options struct {
	// Namespace is the namespace of namespaced objects whose metadata
	// names none, as kubectl's current namespace would be. If empty,
	// "default".
	Namespace string
}

// Problem is one part of the input that was not translated.
type Problem struct {
	File      string
	Line, Col int
	Msg       string
}

func (p Problem) String() string {
	if p.Line == 0 {
		return fmt.Sprintf("%s: %s", p.File, p.Msg)
	}
	return fmt.Sprintf("%s:%d:%d: %s", p.File, p.Line, p.Col, p.Msg)
}

// Result is a translation: the policy fragment and what was left out.
type Result struct {
	// Policy is the fqdngate policy fragment: sources and rules, with a
	// comment naming the input position of each.
	Policy string
	// Rules and Groups count what Policy holds.
	Rules, Groups int
	// Problems lists what was not translated, in input order.
	Problems []Problem
}

// Import translates inputs, read as dialect d.
func Import(d Dialect, inputs []Input, opts Options) Result {
	if opts.Namespace == "" {
		opts.Namespace = "default"
	}
	t := &translator{dialect: d, opts: opts, frag: newFragment(), seen: map[string]string{}}
	var docs []*document
	for _, in := range inputs {
		t.files = append(t.files, in.Name)
		docs = append(docs, t.read(in)...)
	}
	switch d {
	case Cilium:
		for _, doc := range docs {
			t.cilium(doc)
		}
	case Calico:
		t.calico(docs)
	case NPEP:
		for _, doc := range docs {
			t.npep(doc)
		}
	}
	t.sortProblems()
	return Result{
		Policy:   t.frag.emit(d, t.files),
		Rules:    len(t.frag.rules),
		Groups:   len(t.frag.usedGroups()),
		Problems: t.problems,
	}
}

// translator holds one translation's state.
type translator struct {
	dialect  Dialect
	opts     Options
	files    []string
	frag     *fragment
	problems []Problem
	seen     map[string]string // object label → where it was first read
}

// maxProblems bounds the list: a generated or hostile input could
// otherwise produce millions of lines.
const maxProblems = 1000

func (t *translator) sortProblems() {
	rank := map[string]int{}
	for i, f := range t.files {
		if _, ok := rank[f]; !ok {
			rank[f] = i
		}
	}
	sort.SliceStable(t.problems, func(i, j int) bool {
		a, b := t.problems[i], t.problems[j]
		if rank[a.File] != rank[b.File] {
			return rank[a.File] < rank[b.File]
		}
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Col < b.Col
	})
	if len(t.problems) > maxProblems {
		t.problems = append(t.problems[:maxProblems], Problem{File: t.files[0], Msg: fmt.Sprintf("more than %d problems; fix these first", maxProblems)})
	}
}
