// Package manpage writes manual pages in roff (man(7) macros) from the
// two texts fqdngate already has, so the pages never drift from them: the
// man-page style help the CLI prints (sections in capitals at column 0,
// bodies indented four spaces, OPTIONS as Go's flag package prints them),
// and Markdown (docs/policy.md: headings, paragraphs, lists, tables and
// code blocks).
package manpage

import (
	"fmt"
	"regexp"
	"strings"
)

// Header is a page's .TH line and NAME section.
type Header struct {
	Name    string // fqdngate, fqdngate-policy
	Section int    // 1, 5
	Source  string // "fqdngate v1.2.3": the footer's left
	Manual  string // the header's centre
	Summary string // NAME's text after the dash; empty: the body has NAME
}

// writeHeader writes .TH and, with a Summary, the NAME section.
func writeHeader(b *strings.Builder, h Header) {
	fmt.Fprintf(b, ".TH %s %d \"\" %s %s\n", quote(strings.ToUpper(h.Name)), h.Section, quote(h.Source), quote(h.Manual))
	if h.Summary != "" {
		fmt.Fprintf(b, ".SH NAME\n%s \\- %s\n", escape(h.Name), escape(h.Summary))
	}
}

// quote makes s one macro argument.
func quote(s string) string {
	return `"` + strings.ReplaceAll(escape(s), `"`, `\(dq`) + `"`
}

var optionDash = regexp.MustCompile(`(^|[\s\[(|"'=])-`)

// escape makes plain text safe in roff: backslashes print, a line may not
// start a request, and a dash that starts an option is a minus sign (so
// it can be searched and copied).
func escape(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	s = optionDash.ReplaceAllString(s, `$1\-`)
	// Non-ASCII as named glyphs: troff reads bytes, not UTF-8.
	var b strings.Builder
	for _, r := range s {
		if r > 127 {
			fmt.Fprintf(&b, `\[u%04X]`, r)
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

// line writes one input line of text, guarding a leading . or '.
func line(b *strings.Builder, s string) {
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		b.WriteString(`\&`)
	}
	b.WriteString(s)
	b.WriteByte('\n')
}

// verbatim writes lines unfilled, as they are.
func verbatim(b *strings.Builder, lines []string) {
	b.WriteString(".nf\n")
	for _, l := range lines {
		line(b, escape(l))
	}
	b.WriteString(".fi\n")
}
