package manpage

import (
	"fmt"
	"regexp"
	"strings"
)

// Markdown is the roff of a Markdown document such as docs/policy.md:
// the first level-one heading is left out (the header names the page);
// ## headings become .SH, deeper ones .SS; paragraphs are filled; fenced
// code blocks stay verbatim, indented; - and 1. lists become indented
// paragraphs; a table becomes one tagged paragraph per row, its first
// cell the tag and the others "header: cell" (the last one as text), as
// tables too wide for a terminal read better that way. Inline code and
// bold are bold, emphasis italic, and a link keeps its text only.
func Markdown(h Header, md string) string {
	var b strings.Builder
	writeHeader(&b, h)
	lines := strings.Split(strings.ReplaceAll(md, "\r\n", "\n"), "\n")
	seenTitle := false
	para := false // inside a filled paragraph or list item
	inList := false
	sectioned := false // a section heading was written
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		t := strings.TrimSpace(l)
		indent := len(l) - len(strings.TrimLeft(l, " "))
		if !sectioned && t != "" && !(indent == 0 && strings.HasPrefix(t, "#")) {
			// Text before the first section heading: the page's
			// description.
			b.WriteString(".SH DESCRIPTION\n")
			sectioned = true
		}
		switch {
		case strings.HasPrefix(t, "```"):
			var code []string
			for i++; i < len(lines) && !strings.HasPrefix(strings.TrimSpace(lines[i]), "```"); i++ {
				code = append(code, strings.TrimPrefix(lines[i], strings.Repeat(" ", indent)))
			}
			b.WriteString(".PP\n.RS 4\n")
			verbatim(&b, code)
			b.WriteString(".RE\n")
			para = false
		case t == "":
			para = false
		case indent == 0 && strings.HasPrefix(t, "#"):
			level := len(t) - len(strings.TrimLeft(t, "#"))
			text := inline(strings.TrimSpace(t[level:]))
			inList = false
			para = false
			switch {
			case level == 1 && !seenTitle:
				seenTitle = true
			case level <= 2:
				sectioned = true
				b.WriteString(".SH " + quoteInline(strings.ToUpper(text)) + "\n")
			default:
				sectioned = true
				b.WriteString(".SS " + quoteInline(text) + "\n")
			}
		case strings.HasPrefix(t, "|"):
			var rows []string
			for ; i < len(lines) && strings.HasPrefix(strings.TrimSpace(lines[i]), "|"); i++ {
				rows = append(rows, strings.TrimSpace(lines[i]))
			}
			i--
			table(&b, rows)
			para = false
		case listItem.MatchString(t) && indent < 4:
			m := listItem.FindStringSubmatch(t)
			mark := `\(bu`
			if m[1] != "-" && m[1] != "*" {
				mark = m[1]
			}
			b.WriteString(".IP " + mark + " 4\n")
			line(&b, inline(t[len(m[0]):]))
			para, inList = true, true
		default:
			if !para {
				if inList && indent > 0 {
					b.WriteString(".IP \"\" 4\n")
				} else {
					inList = false
					b.WriteString(".PP\n")
				}
				para = true
			}
			line(&b, inline(t))
		}
	}
	return b.String()
}

var listItem = regexp.MustCompile(`^([-*]|\d+\.) `)

// quoteInline quotes already formatted text as one macro argument.
func quoteInline(s string) string { return `"` + strings.ReplaceAll(s, `"`, `\(dq`) + `"` }

// table writes rows (header, separator, body) as tagged paragraphs: the
// first cell is the tag; a column headed meaning or description is text,
// any other "Header: cell.".
func table(b *strings.Builder, rows []string) {
	if len(rows) < 2 {
		for _, r := range rows {
			line(b, inline(r))
		}
		return
	}
	head := cells(rows[0])
	for _, r := range rows[2:] {
		c := cells(r)
		if len(c) == 0 {
			continue
		}
		b.WriteString(".TP\n")
		line(b, inline(c[0]))
		var parts []string
		for j := 1; j < len(c); j++ {
			name := ""
			if j < len(head) {
				name = head[j]
			}
			switch strings.ToLower(name) {
			case "meaning", "description", "what", "":
				parts = append(parts, inline(c[j]))
			default:
				if len(c) == 2 {
					parts = append(parts, inline(c[j]))
					continue
				}
				parts = append(parts, inline(strings.ToUpper(name[:1])+name[1:]+": "+c[j]+"."))
			}
		}
		for _, p := range parts {
			line(b, p)
		}
	}
}

// cells splits a table row on the | outside inline code.
func cells(row string) []string {
	row = strings.TrimSpace(row)
	row = strings.TrimPrefix(row, "|")
	row = strings.TrimSuffix(row, "|")
	var out []string
	var cur strings.Builder
	code := false
	for i := 0; i < len(row); i++ {
		switch c := row[i]; {
		case c == '`':
			code = !code
			cur.WriteByte(c)
		case c == '\\' && i+1 < len(row) && row[i+1] == '|':
			cur.WriteByte('|')
			i++
		case c == '|' && !code:
			out = append(out, strings.TrimSpace(cur.String()))
			cur.Reset()
		default:
			cur.WriteByte(c)
		}
	}
	return append(out, strings.TrimSpace(cur.String()))
}

var (
	inlineCode = regexp.MustCompile("`([^`]+)`")
	bold       = regexp.MustCompile(`\*\*([^*]+)\*\*`)
	emphasis   = regexp.MustCompile(`(^|[\s(])[*_]([^*_\s][^*_]*)[*_]`)
	link       = regexp.MustCompile(`\[([^\]]+)\]\(([^)]+)\)`)
)

// inline formats one line of Markdown text.
func inline(s string) string {
	// Code spans first, kept from the other rules by placeholders.
	var spans []string
	s = inlineCode.ReplaceAllStringFunc(s, func(m string) string {
		spans = append(spans, `\fB`+escape(m[1:len(m)-1])+`\fR`)
		return fmt.Sprintf("\x00%d\x00", len(spans)-1)
	})
	s = link.ReplaceAllString(s, "$1")
	s = escape(s)
	s = bold.ReplaceAllString(s, `\fB$1\fR`)
	s = emphasis.ReplaceAllString(s, `$1\fI$2\fR`)
	for i, sp := range spans {
		s = strings.Replace(s, fmt.Sprintf("\x00%d\x00", i), sp, 1)
	}
	return s
}
