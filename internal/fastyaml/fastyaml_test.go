package fastyaml

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/fqdngate/fqdngate/internal/policy/bigpolicy"
)

// v3 is the oracle: what internal/policy's document() gets from yaml.v3.
func v3(data []byte) (root *yaml.Node, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("yaml.v3 panicked: %v", r)
		}
	}()
	var n yaml.Node
	err = yaml.NewDecoder(bytes.NewReader(data)).Decode(&n)
	if errors.Is(err, io.EOF) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if len(n.Content) == 0 {
		return nil, nil
	}
	return n.Content[0], nil
}

// fast parses data with fastyaml and copies the lazy items into
// Lazy.Content, so the tree can be compared with yaml.v3's.
func fast(data []byte, lazy string) (*yaml.Node, error) {
	d, err := Parse(data, lazy)
	if err != nil {
		return nil, err
	}
	if d.Lazy != nil {
		if d.Lazy.Content != nil {
			return nil, errors.New("Lazy.Content is not nil")
		}
		var items []*yaml.Node
		for n := range d.Items() {
			items = append(items, deepCopy(n))
		}
		if err := d.Err(); err != nil {
			return nil, err
		}
		d.Lazy.Content = items
	}
	return d.Root, nil
}

func deepCopy(n *yaml.Node) *yaml.Node {
	c := *n
	c.Content = nil
	for _, k := range n.Content {
		c.Content = append(c.Content, deepCopy(k))
	}
	return &c
}

// diff says where got differs from want, or "" when it does not.
func diff(got, want *yaml.Node, path string) string {
	if got == nil || want == nil {
		if got != want {
			return fmt.Sprintf("%s: got %v, want %v", path, got, want)
		}
		return ""
	}
	if got.Kind != want.Kind || got.Style != want.Style || got.Value != want.Value ||
		got.Line != want.Line || got.Column != want.Column || got.Tag != want.Tag ||
		got.Anchor != "" || got.Alias != nil || got.HeadComment != "" || got.LineComment != "" || got.FootComment != "" {
		return fmt.Sprintf("%s: got {kind %v style %v tag %q %q at %d:%d}, want {kind %v style %v tag %q %q at %d:%d}", path,
			got.Kind, got.Style, got.Tag, got.Value, got.Line, got.Column,
			want.Kind, want.Style, want.Tag, want.Value, want.Line, want.Column)
	}
	if len(got.Content) != len(want.Content) {
		return fmt.Sprintf("%s: got %d children, want %d", path, len(got.Content), len(want.Content))
	}
	for i := range got.Content {
		if d := diff(got.Content[i], want.Content[i], fmt.Sprintf("%s/%d", path, i)); d != "" {
			return d
		}
	}
	return ""
}

// check compares fastyaml with yaml.v3 on data; accepted is whether
// fastyaml read it.
func check(t testing.TB, data []byte, lazy string) (accepted bool) {
	t.Helper()
	got, err := fast(data, lazy)
	if err != nil && !errors.Is(err, ErrOutside) {
		t.Fatalf("lazy %q: error %v is not ErrOutside\n%s", lazy, err, data)
	}
	want, werr := v3(data)
	if err != nil {
		return false
	}
	if werr != nil {
		t.Fatalf("lazy %q: fastyaml accepted what yaml.v3 refuses (%v):\n%q", lazy, werr, data)
	}
	if d := diff(got, want, "root"); d != "" {
		t.Fatalf("lazy %q: %s\n%q", lazy, d, data)
	}
	return true
}

var accepted = []struct{ name, in string }{
	{"empty", ""},
	{"comments only", "# a\n\n  # b\n"},
	{"mapping", "a: b\nc: d\n"},
	{"no final newline", "a: b"},
	{"leading ---", "---\na: b\n"},
	{"leading --- comment", "# c\n--- # d\na: 1\n"},
	{"null values", "a:\nb: ~\nc: null\nd: Null\ne: NULL\n"},
	{"null at end", "a: 1\nb:"},
	{"nested", "a:\n  b:\n    c: d\n  e: f\n"},
	{"sequence", "- a\n- b\n"},
	{"indentless", "rules:\n- a\n- b\nc: d\n"},
	{"indented seq", "rules:\n  - a\n  - b\nc: d\n"},
	{"compact mapping", "- name: a\n  to: b\n- name: c\n"},
	{"compact seq", "- - x\n  - y\n- - z\n"},
	{"empty entries", "-\n- \n-  # c\n- a\n"},
	{"entry on next line", "-\n  a: b\n  c: d\n-\n  - x\n"},
	{"flow", "a: [b, \"c\", 'd']\ne: {f: g, h: [i, {j: k}]}\nl: []\nm: {}\n"},
	{"flow spaces", "a: [ b ,c ]\nd: {  e:   f }\n"},
	{"root flow seq", "[a, b]\n"},
	{"root flow map", "{a: b}\n"},
	{"root scalars", "hello\n"},
	{"root null", "~ # c\n"},
	{"root quoted", "--- \n'a'\n"},
	{"quotes", "a: \"b c\"\nd: 'e ''f'' g'\n\"h i\": 'j'\n'k': \"\"\nl: ''\n"},
	{"escapes", `a: "\\ \" \n \t \r \0 \a \b \e \f \v \N \_ \L \P \  \x41 \u00e9 \U0001F600 \'"` + "\n"},
	{"comments after values", "a: b # c\nd: [e] # f\ng: 'h' # i\nj: # k\n  - l # m\n"},
	{"hash in scalar", "a: b#c\nd: e #f\n"},
	{"colon in scalar", "a: http://x:80/y\nb: 127.0.0.1:53\nc: [127.0.0.1:53]\n"},
	{"keys", "\"a b\": 1\n-1: 2\n~: 3\nnull: 4\n0x10: 5\n.inf: 6\ntrue: 7\n"},
	{"scalars", "- -1\n- 0x10\n- .inf\n- -.Inf\n- .nan\n- 1.5\n- 012\n- 2001-01-01\n- yes\n- on\n- True\n- 1_000\n- 8000-8100\n- +5\n"},
	{"numbers", "[.0_0, ._0, 1_0.5, .1e1_0, 1_0e1_0, 0b-1, 0o17, -0b11, -0o7, 0b, 08, 1e5, 1., -.5, .5e3, .5e, 99999999999999999999, -99999999999999999999, 0x, 0xG, +0x1F, 1_0, 0_x1, 1e400, .1e400, +1, -0]\n"},
	{"times", "- 2001-12-14t21:59:43.10-05:00\n- 2001-12-14 21:59:43.10\n- 2002-2-30\n- 2002-2-3\n- 2002-02-03T04:05:06Z\n- 2002-02-03x\n- 1234-5-6 7\n"},
	{"space before colon", "a : b\n\"c\" : d\n"},
	{"utf8 values", "caf\u00e9: [b\u00fccher.example, \"\u00e9\", x]\n\u00e9: \n- [\U0001F600, y]\n"},
	{"utf8 comment", "# caf\u00e9 \u2014 ok\na: b # na\u00efve\n"},
	{"wide line", "- [\u00e9, \u00e9\u00e9, 'x\u00e9', {\u00e9: \u00e9}, \"\u00e9\"]\n- \u00e9: \n  b\u00e9:\n"},
	{"tab in comment", "a: b #\tc\n"},
	{"blank lines between", "a:\n\n  - b\n\n  - c\n\nd: e\n"},
	{"comment between key and value", "a:\n# c\n  b: 1\n"},
	{"root indented", "  a: b\n  c: d\n"},
	{"root seq of maps", "- a: 1\n  b:\n  - c\n  d: 2\n"},
	{"deep indent", "a:\n          b: c\n"},
	{"dash word", "a: -x\nb: [-y]\n"},
	{"many spaces after dash", "-   a: b\n    c: d\n"},
	{"duplicate keys", "a: 1\na: 2\n"},
}

var outside = []struct{ name, in string }{
	{"anchor", "a: &x b\nc: *x\n"},
	{"tag", "a: !!str b\n"},
	{"block scalar", "a: |\n  b\n"},
	{"folded", "a: >\n  b\n"},
	{"multi-line plain", "a: b\n  c\n"},
	{"multi-line quoted", "a: \"b\n  c\"\n"},
	{"multi-line flow", "a: [b,\n  c]\n"},
	{"question key", "? a\n: b\n"},
	{"directive", "%YAML 1.2\n---\na: b\n"},
	{"two documents", "a: b\n---\nc: d\n"},
	{"document end", "a: b\n...\n"},
	{"tab indent", "a:\n\tb: c\n"},
	{"tab after colon", "a:\tb\n"},
	{"nel in value", "a: caf\u0085e\n"},
	{"ls in comment", "a: b # \u2028c\n"},
	{"crlf", "a: b\r\n"},
	{"only ---", "---\n"},
	{"root two-line scalar", "a\nb\n"},
	{"root scalar continued", "a\n b\n"},
	{"merge", "<<: {a: b}\n"},
	{"bad indent", "a:\n  b: 1\n c: 2\n"},
	{"mapping in value", "a: b: c\n"},
	{"entry after value", "a: b\n- c\n"},
	{"trailing comma", "a: [b, ]\n"},
	{"empty flow entry", "a: [b, , c]\n"},
	{"flow key without value", "a: {b}\n"},
	{"bad escape", `a: "\q"` + "\n"},
	{"slash escape", `a: "\/"` + "\n"},
	{"surrogate escape", `a: "\ud800"` + "\n"},
	{"unterminated quote", "a: 'b\n"},
	{"control char", "a: b\x01\n"},
	{"nul", "a: b\x00"},
	{"bom", "\ufeffa: b\n"},
	{"hash without space", "a: 'b'#c\n"},
	{"too deep", strings.Repeat("[", 100) + strings.Repeat("]", 100) + "\n"},
	{"long key", strings.Repeat("k", 1100) + ": v\n"},
	{"bad comment after an item", "rules:\n- a # \x01\n"},
	{"bad comment after a middle item", "rules:\n- a # \x01\n- b\nc: d\n"},
	{"two lazy keys", "rules:\n- a\nrules:\n- b\n"},
}

func TestSubset(t *testing.T) {
	for _, tc := range accepted {
		t.Run("accepted/"+tc.name, func(t *testing.T) {
			for _, lazy := range []string{"", "rules", "a"} {
				if !check(t, []byte(tc.in), lazy) {
					t.Errorf("lazy %q: got ErrOutside, want it read", lazy)
				}
			}
		})
	}
	for _, tc := range outside {
		t.Run("outside/"+tc.name, func(t *testing.T) {
			if tc.name == "two lazy keys" {
				if check(t, []byte(tc.in), "rules") {
					t.Error("got it read, want ErrOutside")
				}
				return
			}
			for _, lazy := range []string{"", "rules", "a"} {
				if check(t, []byte(tc.in), lazy) {
					t.Errorf("lazy %q: got it read, want ErrOutside", lazy)
				}
			}
		})
	}
}

// benchPolicyYAML is the policy the loader's reload benchmarks load.
func benchPolicyYAML(n int) []byte { return bigpolicy.YAML(n) }

// realYAML is every policy people read: the examples, the loader's
// testdata, the YAML snippets of the docs and the benchmark's policy.
func realYAML(t testing.TB) map[string][]byte {
	files := map[string][]byte{"benchPolicyYAML(12)": benchPolicyYAML(12)}
	var paths []string
	for _, glob := range []string{"../../examples/*.yaml", "../policy/testdata/*.yaml"} {
		m, err := filepath.Glob(glob)
		if err != nil {
			t.Fatal(err)
		}
		paths = append(paths, m...)
	}
	for _, path := range paths {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		files[path] = data
	}
	docs, err := filepath.Glob("../../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range docs {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for i, s := range snippets(string(data)) {
			files[fmt.Sprintf("%s snippet %d", path, i+1)] = []byte(s)
		}
	}
	if len(paths) < 4 || len(docs) < 3 {
		t.Fatalf("found %d YAML files and %d docs; run from the package directory", len(paths), len(docs))
	}
	return files
}

// snippets are the ```yaml blocks of a Markdown file.
func snippets(md string) []string {
	var out []string
	for {
		i := strings.Index(md, "```yaml\n")
		if i < 0 {
			return out
		}
		md = md[i+len("```yaml\n"):]
		j := strings.Index(md, "```")
		if j < 0 {
			return out
		}
		out = append(out, md[:j])
		md = md[j:]
	}
}

// TestRealPolicies checks that what people write takes the fast path,
// so it is not dead code.
func TestRealPolicies(t *testing.T) {
	for name, data := range realYAML(t) {
		if _, err := v3(data); err != nil {
			t.Logf("%s: yaml.v3 refuses it (%v); skipped", name, err)
			continue
		}
		for _, lazy := range []string{"rules", ""} {
			if !check(t, data, lazy) {
				t.Errorf("%s (lazy %q): got ErrOutside, want the fast path", name, lazy)
			}
		}
	}
}

// TestLazyInTheMiddle checks Parse reads past a lazy sequence that is not
// the last key, and that Items then reads it again.
func TestLazyInTheMiddle(t *testing.T) {
	in := "a: 1\nrules:\n  - name: x\n    to: [y]\n  - z\nb: [2]\n# end\n"
	d, err := Parse([]byte(in), "rules")
	if err != nil {
		t.Fatal(err)
	}
	if d.Lazy == nil || d.Lazy.Line != 3 || d.Lazy.Column != 3 {
		t.Fatalf("Lazy = %+v, want the sequence at 3:3", d.Lazy)
	}
	if got := len(d.Root.Content); got != 6 {
		t.Fatalf("root has %d children, want 6", got)
	}
	n := 0
	for range d.Items() {
		n++
	}
	if n != 2 || d.Err() != nil {
		t.Fatalf("got %d items and %v, want 2 and nil", n, d.Err())
	}
	for range d.Items() {
		t.Fatal("Items yielded on a second range")
	}
	check(t, []byte(in), "rules")

	// The benchmark's policy with its rules first, indentless.
	bench := string(benchPolicyYAML(50))
	i := strings.Index(bench, "rules:\n")
	rules := strings.ReplaceAll(bench[i:], "\n  ", "\n")
	if !check(t, []byte(rules+bench[:i]), "rules") {
		t.Error("rules first: got ErrOutside, want it read")
	}
}

// TestItemsOutside checks that items leaving the subset after Parse end the
// loop with ErrOutside.
func TestItemsOutside(t *testing.T) {
	in := "a: 1\nrules:\n- x\n- &y z\n"
	d, err := Parse([]byte(in), "rules")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for n := range d.Items() {
		got = append(got, n.Value)
	}
	if len(got) != 1 || !errors.Is(d.Err(), ErrOutside) {
		t.Fatalf("got %q and %v, want [x] and ErrOutside", got, d.Err())
	}
}

// TestOwnStrings checks values do not point into the input.
func TestOwnStrings(t *testing.T) {
	data := benchPolicyYAML(30)
	d, err := Parse(data, "rules")
	if err != nil {
		t.Fatal(err)
	}
	lo, hi := uintptrOf(&data[0]), uintptrOf(&data[len(data)-1])
	var walk func(n *yaml.Node)
	walk = func(n *yaml.Node) {
		if n.Value != "" {
			if sp := unsafeStringData(n.Value); sp >= lo && sp <= hi {
				t.Fatalf("%q at %d:%d points into the input", n.Value, n.Line, n.Column)
			}
		}
		for _, c := range n.Content {
			walk(c)
		}
	}
	walk(d.Root)
	for n := range d.Items() {
		walk(n)
	}
}

func FuzzParse(f *testing.F) {
	for _, tc := range accepted {
		f.Add([]byte(tc.in))
	}
	for _, tc := range outside {
		f.Add([]byte(tc.in))
	}
	for _, data := range realYAML(f) {
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, lazy := range []string{"rules", "", "a"} {
			check(t, data, lazy)
		}
		// Random bytes are rarely YAML the subset reads; read as tokens
		// they are, more often.
		if len(data) < 512 {
			check(t, tokens(data), "rules")
		}
	})
}

// vocabulary is what policies are made of, and some of what they are not.
var vocabulary = []string{
	"\n", "\n", "\n", " ", " ", "  ", "  ", "    ", "- ", "- ", "-", "a", "b", "rules", ": ", ":", ": ",
	"[", "]", "{", "}", ", ", ",", "'x'", "''", "'it''s'", `"y"`, `""`, `"\n\x41\u00e9"`, "#c", " #c", "~", "null",
	"-1", "0x10", ".inf", "true", "\u00e9", "---", "...", "?", "&a", "*a", "!!str", "\t", "|", ">", "%", "@",
	"\r\n", "1.5", "a b", "a:b", "#", "\\", "\"", "'", "<<", "80", "8000-8100", "*.x.com", "10.0.0.0/8",
}

func tokens(data []byte) []byte {
	var b []byte
	for _, c := range data {
		b = append(b, vocabulary[int(c)%len(vocabulary)]...)
	}
	return b
}

// TestLongLines checks hostile input costs time in proportion to its size:
// columns on a long line of wide characters, and a deep flow nesting.
func TestLongLines(t *testing.T) {
	for name, in := range map[string]string{
		"wide flow":    "a: [" + strings.Repeat("\u00e9, ", 200_000) + "x]\n",
		"deep flow":    strings.Repeat("[", 1_000_000),
		"long key":     strings.Repeat("k", 1_000_000) + ": v\n",
		"many entries": strings.Repeat("- \n", 300_000),
	} {
		start := time.Now()
		_, err := fast([]byte(in), "rules")
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("%s: took %v (%v)", name, d, err)
		}
	}
}

// FuzzPlainTag compares plainTag with yaml.v3's resolution of a plain
// scalar: a root scalar is the plainest place to ask.
func FuzzPlainTag(f *testing.F) {
	for _, s := range []string{"0b-1", "0o17", "08", "1e5", ".5", "2001-12-14 21:59:43.10", "2002-2-30", "+0x1F", "1_0", "8000-8100", "10.0.0.0/8", "-.inf", "~"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := Parse([]byte(s), "")
		if err != nil || d.Root == nil || d.Root.Style != 0 {
			return
		}
		want, err := v3([]byte(s))
		if err != nil {
			t.Fatalf("%q: fastyaml read it, yaml.v3 says %v", s, err)
		}
		if d.Root.Tag != want.Tag {
			t.Fatalf("%q: got tag %s, want %s", s, d.Root.Tag, want.Tag)
		}
	})
}
