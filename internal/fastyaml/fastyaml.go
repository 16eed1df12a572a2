// Package fastyaml reads the plain subset of YAML that policies are written
// in into the node tree yaml.v3 builds, at a fraction of its cost, and hands
// over the items of one big block sequence one at a time in reused memory.
//
// Anything outside the subset (or not YAML at all) is ErrOutside: the caller
// parses the file with yaml.v3 instead, which words every syntax error. The
// subset is one document (after an optional leading "---") whose root is a
// block mapping, a block sequence, a one-line flow collection or a one-line
// scalar, made of:
//
//   - block mappings and sequences, including "- key: v" and "- - x" compact
//     forms and a sequence at the indentation of its key;
//   - one-line flow sequences and mappings, nested ("{a: [b, c]}"), without
//     empty or trailing entries, and with ": " after every flow mapping key;
//   - one-line plain, single- and double-quoted scalars (double-quoted
//     escapes included), and "key:" with nothing after it (null);
//   - comments and blank lines.
//
// Plain and quoted scalars may hold any UTF-8 yaml.v3 reads as text (not
// NEL, LS, PS or a byte order mark). Outside the subset: anchors, aliases,
// tags, block scalars, multi-line scalars and flow collections, "?" keys,
// "<<", directives, "..." and a second document, tabs (but in comments), CR,
// a plain scalar starting with "-" but for "-" and a letter, digit or ".",
// nesting deeper than maxDepth, keys longer than maxKeyLen bytes.
//
// The nodes equal yaml.v3's in Kind, Style, Tag, Value, Line, Column and
// Content; resolve.go gives plain scalars yaml.v3's tags without its error
// allocations for values that are not numbers. Comments are dropped
// (HeadComment, LineComment and FootComment are empty). Every Value is a
// string of its own, never a substring of the input, so a tree does not
// keep the input alive; keys the policy uses share one string each.
package fastyaml

import (
	"errors"
	"iter"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// ErrOutside says data uses YAML this package does not read (or is not valid
// YAML): parse it with yaml.v3 instead.
var ErrOutside = errors.New("fastyaml: outside the subset of YAML read here; parse with yaml.v3")

const (
	// maxDepth bounds nesting, so hostile input cannot grow the stack.
	maxDepth = 64
	// maxKeyLen stays under yaml.v3's 1024-character limit on implicit keys.
	maxKeyLen = 1000
)

const (
	nullTag  = "!!null"
	boolTag  = "!!bool"
	strTag   = "!!str"
	intTag   = "!!int"
	floatTag = "!!float"
	seqTag   = "!!seq"
	mapTag   = "!!map"
)

// Doc is one parsed document. Until its items are read it holds the input.
type Doc struct {
	Root *yaml.Node // what yaml.v3 puts in DocumentNode.Content[0]; nil for an empty document
	Lazy *yaml.Node // the lazy sequence's node inside Root (Content nil), or nil

	p        *parser
	items    mark // the first item's "-"
	deferred bool // items not yet read: Items must check they end the file
	ranged   bool
	err      error
}

// mark is a position in the input: pos is at the first non-space byte of a
// line whose indentation is ind.
type mark struct {
	pos, line, lineStart, ind int
}

// Parse reads data's one document. When the document's root is a block
// mapping with the top-level key named lazy, and that key's value is a block
// sequence, the sequence's items are not built: Doc.Lazy is the sequence's
// node inside Root (Kind SequenceNode, Tag "!!seq", Style, Line, Column as
// yaml.v3 gives them, Content nil), and Items reads its items. Otherwise
// Lazy is nil and Root is the whole tree.
//
// If the lazy key is not the last top-level key, Parse reads its items
// (without keeping them) to get to the keys after it; then Items cannot
// fail. If it is the last, its items are read only by Items.
func Parse(data []byte, lazy string) (*Doc, error) {
	d := &Doc{}
	p := &parser{data: data, line: 1, lazy: lazy, doc: d}
	d.p = p
	root := p.document()
	if p.bad {
		return nil, ErrOutside
	}
	d.Root = root
	if d.Lazy == nil {
		d.p = nil // let the input go
	}
	return d, nil
}

// Items yields the lazy sequence's items in order. An item's nodes are valid
// only until the loop moves on (their memory is reused). If the items leave
// the subset, the loop ends early and Err returns ErrOutside. Items may be
// ranged over once.
func (d *Doc) Items() iter.Seq[*yaml.Node] {
	return func(yield func(*yaml.Node) bool) {
		if d.Lazy == nil || d.ranged || d.err != nil {
			return
		}
		d.ranged = true
		p := d.p
		defer func() { d.p = nil }() // let the input go
		p.seek(d.items)
		col := d.items.ind
		stopped := false
		ok := p.entries(col, func(n *yaml.Node) bool {
			if !yield(n) {
				stopped = true
				return false
			}
			return true
		})
		if stopped {
			return
		}
		// In a deferred read the items end the file; otherwise Parse saw
		// them end where the rest of the document goes on.
		if !ok || (d.deferred && p.ind != -1) {
			d.err = ErrOutside
		}
	}
}

// Err is ErrOutside when Items stopped because the items left the subset.
func (d *Doc) Err() error { return d.err }

// parser reads data from pos. Block parsers return with pos at the first
// non-space byte of the next line with content, ind its indentation (-1 at
// the end of the input); bad is set on anything outside the subset, and
// every parser returns nil once it is.
type parser struct {
	data            []byte
	pos             int
	line, lineStart int
	ind             int
	depth           int
	bad             bool
	wide            bool // a character of more than one byte on this line
	colAt, colRunes int  // runeCol's last answer: colRunes characters to colAt

	lazy     string
	doc      *Doc
	sawStart bool // a leading "---"

	reuse bool  // allocate from tmp, reset for every lazy item
	keep  arena // nodes of Root
	tmp   arena // nodes of one lazy item

	stack []*yaml.Node // children of the collections being read
	buf   []byte       // a quoted scalar's value with escapes resolved
}

func (p *parser) fail() *yaml.Node {
	p.bad = true
	return nil
}

func (p *parser) seek(m mark) {
	p.pos, p.line, p.lineStart, p.ind = m.pos, m.line, m.lineStart, m.ind
	p.wide, p.colAt, p.colRunes = false, m.lineStart, 0 // only spaces before pos
}

func (p *parser) mark() mark { return mark{p.pos, p.line, p.lineStart, p.ind} }

func (p *parser) col() int { return p.pos - p.lineStart }

// blankz is whether the byte at i is a space, a line break or the end.
func (p *parser) blankz(i int) bool {
	return i >= len(p.data) || p.data[i] == ' ' || p.data[i] == '\n'
}

// isEntry is whether pos is at a block sequence entry's "-".
func (p *parser) isEntry() bool {
	return p.pos < len(p.data) && p.data[p.pos] == '-' && p.blankz(p.pos+1)
}

func (p *parser) node(kind yaml.Kind, tag string, line, col int) *yaml.Node {
	a := &p.keep
	if p.reuse {
		a = &p.tmp
	}
	n := a.node()
	*n = yaml.Node{Kind: kind, Tag: tag, Line: line, Column: col + 1}
	return n
}

// content moves the children above base off the stack into n.Content.
func (p *parser) content(n *yaml.Node, base int) {
	a := &p.keep
	if p.reuse {
		a = &p.tmp
	}
	c := a.ptrs(len(p.stack) - base)
	copy(c, p.stack[base:])
	clear(p.stack[base:])
	p.stack = p.stack[:base]
	n.Content = c
}

// document reads the whole input: one root node, or nil when there is none.
func (p *parser) document() *yaml.Node {
	p.nextLine(true)
	if p.ind == -1 && p.sawStart { // yaml.v3 makes a null
		return p.fail()
	}
	if p.bad || p.ind == -1 {
		return nil
	}
	var root *yaml.Node
	if c := p.data[p.pos]; c == '[' || c == '{' {
		root = p.flow()
		if root == nil || !p.endLine() {
			return p.fail()
		}
		p.nextLine(false)
	} else if p.isEntry() {
		root = p.seq(p.ind, false)
	} else {
		k, isKey := p.inline(false)
		switch {
		case k == nil:
			return nil
		case isKey:
			root = p.mapping(p.ind, k, true)
		case !p.endLine():
			return p.fail()
		default: // a scalar
			root = k
			p.nextLine(false)
		}
	}
	if p.bad || p.ind != -1 {
		return p.fail()
	}
	return root
}

// nextLine moves past the end of the line and past blank and comment lines
// to the next line with content; first allows one leading "---".
func (p *parser) nextLine(first bool) {
	for {
		i := p.pos
		for i < len(p.data) && p.data[i] == ' ' {
			i++
		}
		p.pos = i
		if i >= len(p.data) {
			p.ind = -1
			return
		}
		switch p.data[i] {
		case '\n':
			p.newline()
			continue
		case '#':
			if !p.comment() {
				return
			}
			continue
		}
		p.ind = i - p.lineStart
		if p.ind == 0 && i+3 <= len(p.data) && p.blankz(i+3) &&
			(string(p.data[i:i+3]) == "---" || string(p.data[i:i+3]) == "...") {
			if !first || p.data[i] != '-' {
				p.bad = true
				return
			}
			first = false
			p.sawStart = true
			p.pos += 3
			if !p.endLine() {
				p.bad = true
				return
			}
			continue
		}
		return
	}
}

func (p *parser) newline() {
	p.pos++
	p.line++
	p.lineStart = p.pos
	p.wide = false
	p.colAt, p.colRunes = p.pos, 0
}

// char is the length of the UTF-8 character at i if yaml.v3 reads it as a
// character of text, else 0 (and p.bad): not a control, a line break
// (NEL, LS, PS), a byte order mark or a non-character. It notes that this
// line's columns are no longer its bytes.
func (p *parser) char(i int) int {
	r, size := utf8.DecodeRune(p.data[i:])
	if r >= 0xa0 && r <= 0xd7ff && r != 0x2028 && r != 0x2029 ||
		r >= 0xe000 && r <= 0xfffd && r != 0xfeff && !(r == utf8.RuneError && size == 1) ||
		r >= 0x10000 && r <= 0x10ffff {
		p.wide = true
		return size
	}
	p.bad = true
	return 0
}

// runeCol is pos's column in characters, as yaml.v3 counts them.
func (p *parser) runeCol() int {
	if !p.wide {
		return p.pos - p.lineStart
	}
	// Counted from the last column asked for, so a long line of many
	// scalars is not counted over and over.
	if p.pos < p.colAt {
		p.colAt, p.colRunes = p.lineStart, 0
	}
	p.colRunes += utf8.RuneCount(p.data[p.colAt:p.pos])
	p.colAt = p.pos
	return p.colRunes
}

// endLine moves past spaces, a comment and the line break that end a line.
func (p *parser) endLine() bool {
	i := p.pos
	for i < len(p.data) && p.data[i] == ' ' {
		i++
	}
	p.pos = i
	if i >= len(p.data) {
		return true
	}
	switch p.data[i] {
	case '\n':
		p.newline()
		return true
	case '#':
		if i > p.lineStart && p.data[i-1] != ' ' {
			return false
		}
		return p.comment()
	}
	return false
}

// comment moves past a comment and its line break, checking that it holds
// only characters yaml.v3 reads.
func (p *parser) comment() bool {
	i := p.pos
	for i < len(p.data) {
		c := p.data[i]
		switch {
		case c == '\n':
			p.pos = i
			p.newline()
			return true
		case c == '\t' || c >= 0x20 && c < 0x7f:
			i++
		case c < 0x80:
			p.bad = true
			return false
		default:
			size := p.char(i)
			if size == 0 {
				return false
			}
			i += size
		}
	}
	p.pos = i
	return true
}

// block reads the block mapping or sequence whose first line starts at pos,
// in column c.
func (p *parser) block(c int) *yaml.Node {
	if p.isEntry() {
		return p.seq(c, false)
	}
	k, isKey := p.inline(false)
	if k == nil || !isKey {
		return p.fail()
	}
	return p.mapping(c, k, false)
}

// mapping reads a block mapping in column c whose first key, k, has been
// read.
func (p *parser) mapping(c int, k *yaml.Node, root bool) *yaml.Node {
	if p.depth++; p.depth > maxDepth {
		return p.fail()
	}
	m := p.node(yaml.MappingNode, mapTag, k.Line, c)
	base := len(p.stack)
	for {
		p.stack = append(p.stack, k)
		p.pos++ // the ":"
		colonLine, colonCol := p.line, p.runeCol()
		v := p.value(c, root && k.Value == p.lazy && p.lazy != "")
		if v == nil {
			return nil
		}
		if v.Kind == 0 { // empty
			v = p.node(yaml.ScalarNode, nullTag, colonLine, colonCol)
		}
		p.stack = append(p.stack, v)
		if p.ind < c {
			break
		}
		if p.ind > c || p.isEntry() {
			return p.fail()
		}
		var isKey bool
		if k, isKey = p.inline(false); k == nil || !isKey {
			return p.fail()
		}
	}
	p.content(m, base)
	p.depth--
	return m
}

// empty stands for a value that is not there; the caller makes the null.
var empty = &yaml.Node{}

// value reads the value after a block mapping key in column c, and the
// rest of its line.
func (p *parser) value(c int, lazy bool) *yaml.Node {
	for p.pos < len(p.data) && p.data[p.pos] == ' ' {
		p.pos++
	}
	if p.pos < len(p.data) && p.data[p.pos] != '\n' && p.data[p.pos] != '#' {
		v, isKey := p.inline(false)
		if v == nil || isKey || !p.endLine() {
			return p.fail()
		}
		p.nextLine(false)
		return v
	}
	if !p.endLine() {
		return p.fail()
	}
	p.nextLine(false)
	switch {
	case p.bad:
		return nil
	case p.ind >= c && p.isEntry() && lazy:
		return p.lazySeq(c)
	case p.ind > c:
		return p.block(p.ind)
	case p.ind == c && p.isEntry():
		return p.seq(c, true)
	}
	return empty
}

// seq reads a block sequence in column c; indentless is a sequence in the
// column of its mapping key, which ends at the next key.
func (p *parser) seq(c int, indentless bool) *yaml.Node {
	if p.depth++; p.depth > maxDepth {
		return p.fail()
	}
	s := p.node(yaml.SequenceNode, seqTag, p.line, c)
	base := len(p.stack)
	for {
		v := p.entry(c)
		if v == nil {
			return nil
		}
		p.stack = append(p.stack, v)
		if p.ind == c && p.isEntry() {
			continue
		}
		if p.ind < c || indentless && p.ind == c {
			break
		}
		return p.fail()
	}
	p.content(s, base)
	p.depth--
	return s
}

// entry reads the block sequence entry at pos ("-" in column c).
func (p *parser) entry(c int) *yaml.Node {
	line := p.line
	p.pos++
	for p.pos < len(p.data) && p.data[p.pos] == ' ' {
		p.pos++
	}
	if p.pos >= len(p.data) || p.data[p.pos] == '\n' || p.data[p.pos] == '#' {
		if !p.endLine() {
			return p.fail()
		}
		p.nextLine(false)
		if p.bad {
			return nil
		}
		if p.ind > c {
			return p.block(p.ind)
		}
		return p.node(yaml.ScalarNode, nullTag, line, c+1)
	}
	d := p.col()
	if p.isEntry() {
		return p.seq(d, false)
	}
	v, isKey := p.inline(false)
	if v == nil {
		return nil
	}
	if isKey {
		return p.mapping(d, v, false)
	}
	if !p.endLine() {
		return p.fail()
	}
	p.nextLine(false)
	return v
}

// entries reads the entries of the block sequence in column c from pos,
// handing each to f; it stops early when f returns false. Each entry's
// nodes are reused for the next.
func (p *parser) entries(c int, f func(*yaml.Node) bool) bool {
	p.reuse = true
	defer func() { p.reuse = false }()
	p.depth = 2 // the root mapping and the sequence
	for {
		p.tmp.reset()
		v := p.entry(c)
		if v == nil || p.bad { // a bad comment after a good value
			return false
		}
		if !f(v) {
			return true
		}
		if p.ind == c && p.isEntry() {
			continue
		}
		return p.ind <= c
	}
}

// lazySeq stands for the lazy block sequence at pos, whose key is in column
// c. When the document goes on after it, its items are read here without
// being kept, to find where; otherwise Items reads them.
func (p *parser) lazySeq(c int) *yaml.Node {
	d := p.doc
	if d.Lazy != nil { // the key twice
		return p.fail()
	}
	s := p.node(yaml.SequenceNode, seqTag, p.line, p.ind)
	d.Lazy = s
	d.items = p.mark()
	end, ok := p.seqEnd(p.ind)
	if !ok {
		d.deferred = true
		p.pos, p.ind = len(p.data), -1
		return s
	}
	if !p.entries(d.items.ind, func(*yaml.Node) bool { return true }) || p.pos != end {
		return p.fail()
	}
	p.tmp.reset()
	p.depth = 1
	return s
}

// seqEnd finds, by indentation alone, where the block sequence in column c
// starting at pos ends: the first byte of the first line with content that
// is not in it. ok is false when the sequence ends the input.
func (p *parser) seqEnd(c int) (end int, ok bool) {
	data := p.data
	i := p.lineStart
	for i < len(data) {
		j := i
		for j < len(data) && data[j] == ' ' {
			j++
		}
		if j < len(data) && data[j] != '\n' && data[j] != '#' {
			if j-i < c || j-i == c && !(data[j] == '-' && p.blankz(j+1)) {
				return j, true
			}
		}
		for j < len(data) && data[j] != '\n' {
			j++
		}
		i = j + 1
	}
	return 0, false
}

// inline reads a scalar or flow collection within the line; isKey is
// whether a scalar is followed by ": " (pos is then at the ":").
func (p *parser) inline(flow bool) (n *yaml.Node, isKey bool) {
	if p.pos >= len(p.data) {
		return p.fail(), false
	}
	line, col, bcol := p.line, p.runeCol(), p.col()
	var v []byte
	var style yaml.Style
	switch c := p.data[p.pos]; c {
	case '[', '{':
		if flow {
			return p.flow(), false
		}
		n := p.flow()
		if n != nil && p.pos < len(p.data) && p.data[p.pos] == ':' {
			return p.fail(), false
		}
		return n, false
	case '"':
		v, style = p.quoted('"'), yaml.DoubleQuotedStyle
	case '\'':
		v, style = p.quoted('\''), yaml.SingleQuotedStyle
	default:
		v = p.plain(flow)
	}
	if p.bad {
		return nil, false
	}
	end := p.pos
	for p.pos < len(p.data) && p.data[p.pos] == ' ' {
		p.pos++
	}
	isKey = p.pos < len(p.data) && p.data[p.pos] == ':' && p.blankz(p.pos+1)
	if !isKey {
		p.pos = end
	} else if p.pos-p.lineStart-bcol > maxKeyLen {
		return p.fail(), false
	}
	n = p.node(yaml.ScalarNode, strTag, line, col)
	n.Style = style
	if isKey {
		n.Value = internKey(v)
	} else {
		n.Value = string(v)
	}
	if style == 0 {
		if n.Tag = plainTag(n.Value); n.Tag == "" {
			return p.fail(), false
		}
	}
	return n, isKey
}

// plain reads a plain scalar: the bytes from pos to where it ends.
func (p *parser) plain(flow bool) []byte {
	data := p.data
	start := p.pos
	c := data[start]
	switch c {
	case '-':
		// "-1", "-x"; "- " is an entry and "--" may be a marker.
		if start+1 >= len(data) || !isWord(data[start+1]) {
			p.bad = true
			return nil
		}
	case '?', ':', ',', '[', ']', '{', '}', '#', '&', '*', '!', '|', '>', '\'', '"', '%', '@', '`', ' ', '\n':
		p.bad = true
		return nil
	}
	end := start
	i := start
loop:
	for i < len(data) {
		c := data[i]
		switch {
		case c == ' ':
			j := i + 1
			for j < len(data) && data[j] == ' ' {
				j++
			}
			if j >= len(data) || data[j] == '\n' || data[j] == '#' {
				break loop
			}
			i = j
			continue
		case c == '\n':
			break loop
		case c == ':':
			if p.blankz(i + 1) {
				break loop
			}
			if flow && isFlowIndicator(data[i+1]) {
				p.bad = true
				return nil
			}
		case flow && (isFlowIndicator(c) || c == '?'):
			break loop
		case c >= 0x80:
			size := p.char(i)
			if size == 0 {
				return nil
			}
			i += size
			end = i
			continue
		case c < 0x20 || c > 0x7e:
			p.bad = true
			return nil
		}
		i++
		end = i
	}
	p.pos = end
	return data[start:end]
}

func isWord(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '.'
}

func isFlowIndicator(c byte) bool {
	return c == ',' || c == '[' || c == ']' || c == '{' || c == '}'
}

// quoted reads a scalar quoted with q, ' or ", within the line: in
// single quotes ” stands for ', in double quotes a backslash escapes.
// The value is a slice of the input when nothing was escaped, else of
// p.buf.
func (p *parser) quoted(q byte) []byte {
	data := p.data
	i := p.pos + 1
	start := i
	p.buf = p.buf[:0]
	copied := false // (inline, not a closure: one kept i and copied out of registers)
	for i < len(data) {
		c := data[i]
		switch {
		case c == '\'' && q == '\'' && i+1 < len(data) && data[i+1] == '\'':
			if !copied {
				p.buf, copied = append(p.buf, data[start:i]...), true
			}
			p.buf = append(p.buf, '\'')
			i += 2
			continue
		case c == q:
			p.pos = i + 1
			if copied {
				return p.buf
			}
			return data[start:i]
		case c == '\\' && q == '"':
			if !copied {
				p.buf, copied = append(p.buf, data[start:i]...), true
			}
			n, ok := p.escape(i + 1)
			if !ok {
				p.bad = true
				return nil
			}
			i += 1 + n
			continue
		case c >= 0x80:
			size := p.char(i)
			if size == 0 {
				return nil
			}
			if copied {
				p.buf = append(p.buf, data[i:i+size]...)
			}
			i += size
			continue
		case c < 0x20 || c > 0x7e:
			p.bad = true
			return nil
		}
		if copied {
			p.buf = append(p.buf, c)
		}
		i++
	}
	p.bad = true
	return nil
}

// escape appends to buf what the escape after a backslash at i stands
// for, and says how many bytes it took.
func (p *parser) escape(i int) (int, bool) {
	if i >= len(p.data) {
		return 0, false
	}
	var r rune
	switch c := p.data[i]; c {
	case '0':
		r = 0
	case 'a':
		r = 7
	case 'b':
		r = 8
	case 't':
		r = 9
	case 'n':
		r = 10
	case 'v':
		r = 11
	case 'f':
		r = 12
	case 'r':
		r = 13
	case 'e':
		r = 0x1b
	case ' ', '"', '\'', '\\':
		r = rune(c)
	case 'N':
		r = 0x85
	case '_':
		r = 0xa0
	case 'L':
		r = 0x2028
	case 'P':
		r = 0x2029
	case 'x', 'u', 'U':
		n := 2
		if c == 'u' {
			n = 4
		} else if c == 'U' {
			n = 8
		}
		if i+1+n > len(p.data) {
			return 0, false
		}
		for _, h := range p.data[i+1 : i+1+n] {
			var d byte
			switch {
			case h >= '0' && h <= '9':
				d = h - '0'
			case h >= 'a' && h <= 'f':
				d = h - 'a' + 10
			case h >= 'A' && h <= 'F':
				d = h - 'A' + 10
			default:
				return 0, false
			}
			r = r<<4 | rune(d)
		}
		if r >= 0xd800 && r <= 0xdfff || r > 0x10ffff {
			return 0, false
		}
		p.buf = utf8.AppendRune(p.buf, r)
		return 1 + n, true
	default:
		return 0, false
	}
	p.buf = utf8.AppendRune(p.buf, r)
	return 1, true
}

// flow reads a flow sequence or mapping within the line.
func (p *parser) flow() *yaml.Node {
	if p.depth++; p.depth > maxDepth {
		return p.fail()
	}
	open := p.data[p.pos]
	closer, kind, tag := byte(']'), yaml.SequenceNode, seqTag
	if open == '{' {
		closer, kind, tag = '}', yaml.MappingNode, mapTag
	}
	n := p.node(kind, tag, p.line, p.runeCol())
	n.Style = yaml.FlowStyle
	p.pos++
	p.spaces()
	base := len(p.stack)
	if p.pos < len(p.data) && p.data[p.pos] == closer {
		p.pos++
		n.Content = nil
		p.depth--
		return n
	}
	for {
		if kind == yaml.MappingNode {
			k, isKey := p.inline(true)
			if k == nil || !isKey || k.Kind != yaml.ScalarNode {
				return p.fail()
			}
			p.stack = append(p.stack, k)
			p.pos++ // ":"
			p.spaces()
		}
		v, isKey := p.inline(true)
		if v == nil || isKey {
			return p.fail()
		}
		p.stack = append(p.stack, v)
		p.spaces()
		if p.pos >= len(p.data) {
			return p.fail()
		}
		switch p.data[p.pos] {
		case ',':
			p.pos++
			p.spaces()
			if p.pos < len(p.data) && p.data[p.pos] == closer {
				return p.fail() // a trailing comma
			}
			continue
		case closer:
			p.pos++
			p.content(n, base)
			p.depth--
			return n
		}
		return p.fail()
	}
}

func (p *parser) spaces() {
	for p.pos < len(p.data) && p.data[p.pos] == ' ' {
		p.pos++
	}
}

// internKey shares the policy's keys between all the mappings that have
// them, instead of a string each (the switch does not allocate).
func internKey(b []byte) string {
	switch string(b) {
	case "to":
		return "to"
	case "name":
		return "name"
	case "ports":
		return "ports"
	case "dns":
		return "dns"
	case "from":
		return "from"
	case "sources":
		return "sources"
	case "rules":
		return "rules"
	case "listen":
		return "listen"
	case "firewall":
		return "firewall"
	case "backend":
		return "backend"
	case "upstreams":
		return "upstreams"
	case "tls":
		return "tls"
	case "proxy":
		return "proxy"
	case "mode":
		return "mode"
	case "hook":
		return "hook"
	case "admin":
		return "admin"
	case "transparent_ports":
		return "transparent_ports"
	case "transparent":
		return "transparent"
	case "log":
		return "log"
	case "kubernetes":
		return "kubernetes"
	case "deny_with":
		return "deny_with"
	case "users":
		return "users"
	case "groups":
		return "groups"
	case "allow_public_suffix":
		return "allow_public_suffix"
	case "verify":
		return "verify"
	case "state_file":
		return "state_file"
	case "rule":
		return "rule"
	case "reason":
		return "reason"
	case "min_ttl":
		return "min_ttl"
	case "inspect_tunnels":
		return "inspect_tunnels"
	case "forward":
		return "forward"
	case "format":
		return "format"
	case "dnssec":
		return "dnssec"
	case "cluster":
		return "cluster"
	case "ca_file":
		return "ca_file"
	case "via":
		return "via"
	case "timeout":
		return "timeout"
	case "cidrs":
		return "cidrs"
	case "interfaces":
		return "interfaces"
	case "inside":
		return "inside"
	case "qtypes":
		return "qtypes"
	case "pattern":
		return "pattern"
	}
	return string(b)
}

// arena hands out nodes and Content slices in chunks, so a tree costs a
// few allocations; reset makes a reused arena hand the same memory out
// again.
type arena struct {
	nchunks [][]yaml.Node
	ni, nj  int
	pchunks [][]*yaml.Node
	pi, pj  int
}

const chunk = 256

func (a *arena) reset() { a.ni, a.nj, a.pi, a.pj = 0, 0, 0, 0 }

func (a *arena) node() *yaml.Node {
	for a.ni < len(a.nchunks) && a.nj == len(a.nchunks[a.ni]) {
		a.ni, a.nj = a.ni+1, 0
	}
	if a.ni == len(a.nchunks) {
		a.nchunks = append(a.nchunks, make([]yaml.Node, chunk))
	}
	a.nj++
	return &a.nchunks[a.ni][a.nj-1]
}

func (a *arena) ptrs(n int) []*yaml.Node {
	if n == 0 {
		return nil
	}
	if n > chunk {
		return make([]*yaml.Node, n)
	}
	for a.pi < len(a.pchunks) && a.pj+n > len(a.pchunks[a.pi]) {
		a.pi, a.pj = a.pi+1, 0
	}
	if a.pi == len(a.pchunks) {
		a.pchunks = append(a.pchunks, make([]*yaml.Node, chunk))
	}
	a.pj += n
	return a.pchunks[a.pi][a.pj-n : a.pj : a.pj]
}
