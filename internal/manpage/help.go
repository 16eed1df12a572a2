package manpage

import (
	"fmt"
	"regexp"
	"strings"
)

// helpSection is one section of man-page style help text.
type helpSection struct {
	title string
	body  []string // dedented
}

func parseHelp(help string) []helpSection {
	var secs []helpSection
	for _, l := range strings.Split(strings.TrimRight(help, "\n"), "\n") {
		if l != "" && l[0] != ' ' && l[0] != '\t' {
			secs = append(secs, helpSection{title: strings.TrimSpace(l)})
			continue
		}
		if len(secs) == 0 {
			secs = append(secs, helpSection{title: "DESCRIPTION"})
		}
		s := &secs[len(secs)-1]
		if s.title == "OPTIONS" {
			s.body = append(s.body, l) // flag's layout: "  -name ARG" then "    \tusage"
			continue
		}
		s.body = append(s.body, strings.TrimPrefix(l, "    "))
	}
	for i := range secs {
		for len(secs[i].body) > 0 && strings.TrimSpace(secs[i].body[len(secs[i].body)-1]) == "" {
			secs[i].body = secs[i].body[:len(secs[i].body)-1]
		}
	}
	return secs
}

// Help is the roff of help text: each section a heading (macro .SH or
// .SS), synopses and examples as they are, definition lists (a term, two
// or more spaces, and its text) as tagged paragraphs, other paragraphs
// filled, and OPTIONS one tagged paragraph per flag. skip names sections
// left out.
func Help(help, macro string, skip ...string) string {
	var b strings.Builder
outer:
	for _, s := range parseHelp(help) {
		for _, k := range skip {
			if s.title == k {
				continue outer
			}
		}
		b.WriteString(macro + " " + quote(s.title) + "\n")
		switch s.title {
		case "SYNOPSIS", "EXAMPLES", "FILES":
			verbatim(&b, s.body)
		case "OPTIONS":
			options(&b, s.body)
		default:
			paragraphs(&b, s.body)
		}
	}
	return b.String()
}

// Summary is the text after "name - " in help's NAME section.
func Summary(help string) string {
	for _, s := range parseHelp(help) {
		if s.title == "NAME" {
			text := strings.Join(strings.Fields(strings.Join(s.body, " ")), " ")
			if _, after, ok := strings.Cut(text, " - "); ok {
				return after
			}
			return text
		}
	}
	return ""
}

var flagLine = regexp.MustCompile(`^  (-\S+)(?: (\S+))?$`)

// Flag is one option as Go's flag package prints it.
type Flag struct {
	Name  string // without dashes
	Arg   string // the value's placeholder; empty for a boolean
	Usage string
}

// Flags parses the OPTIONS section of help.
func Flags(help string) []Flag {
	var fl []Flag
	for _, s := range parseHelp(help) {
		if s.title != "OPTIONS" {
			continue
		}
		for _, l := range s.body {
			if m := flagLine.FindStringSubmatch(l); m != nil {
				fl = append(fl, Flag{Name: strings.TrimLeft(m[1], "-"), Arg: m[2]})
				continue
			}
			if len(fl) > 0 && strings.TrimSpace(l) != "" {
				f := &fl[len(fl)-1]
				f.Usage = strings.TrimSpace(f.Usage + " " + strings.TrimSpace(l))
			}
		}
	}
	return fl
}

func options(b *strings.Builder, body []string) {
	for _, f := range Flags("OPTIONS\n" + strings.Join(body, "\n")) {
		b.WriteString(".TP\n")
		dash := `\-\-`
		if len(f.Name) == 1 {
			dash = `\-`
		}
		if f.Arg != "" {
			line(b, `\fB`+dash+escape(f.Name)+`\fR \fI`+escape(f.Arg)+`\fR`)
		} else {
			line(b, `\fB`+dash+escape(f.Name)+`\fR`)
		}
		line(b, escape(f.Usage))
	}
}

var (
	termLine = regexp.MustCompile(`^(\S+)( {2,})\S`)
	// a later term may be as long as the column allows, with one space.
	nextTerm = regexp.MustCompile(`^(\S+)( +)\S`)
)

// paragraphs writes blocks separated by blank lines: a definition list,
// a filled paragraph, or (indented otherwise) verbatim lines.
func paragraphs(b *strings.Builder, body []string) {
	first := true
	for _, block := range blocks(body) {
		if !first {
			b.WriteString(".PP\n")
		}
		first = false
		if items, col, ok := definitions(block); ok {
			for _, it := range items {
				fmt.Fprintf(b, ".TP %d\n", col)
				line(b, `\fB`+escape(it[0])+`\fR`)
				line(b, escape(it[1]))
			}
			continue
		}
		flat := true
		for _, l := range block {
			if strings.HasPrefix(l, " ") {
				flat = false
			}
		}
		if !flat {
			verbatim(b, block)
			continue
		}
		for _, l := range block {
			line(b, escape(strings.TrimSpace(l)))
		}
	}
}

func blocks(body []string) [][]string {
	var out [][]string
	var cur []string
	for _, l := range body {
		if strings.TrimSpace(l) == "" {
			if cur != nil {
				out = append(out, cur)
				cur = nil
			}
			continue
		}
		cur = append(cur, l)
	}
	if cur != nil {
		out = append(out, cur)
	}
	return out
}

// definitions reads a block of "term  text" items whose continuation
// lines are indented to the text's column.
func definitions(block []string) ([][2]string, int, bool) {
	m := termLine.FindStringSubmatch(block[0])
	if m == nil {
		return nil, 0, false
	}
	col := len(m[1]) + len(m[2])
	var items [][2]string
	for _, l := range block {
		if m := nextTerm.FindStringSubmatch(l); m != nil && len(m[1])+len(m[2]) == col {
			items = append(items, [2]string{m[1], strings.TrimSpace(l[col:])})
			continue
		}
		if len(l) > col && strings.TrimSpace(l[:col]) == "" && l[col] != ' ' {
			items[len(items)-1][1] += " " + strings.TrimSpace(l)
			continue
		}
		return nil, 0, false
	}
	return items, col, true
}
