package manpage

import (
	"strings"
	"testing"
)

func TestHelp(t *testing.T) {
	help := `NAME
    tool x - do x

SYNOPSIS
    tool x -c FILE

DESCRIPTION
    First paragraph, with a -flag and a back\slash,
    on two lines.

    .starts with a dot
    a    defined term
         continued
    bb   another
         (more)
    longterm one space

OPTIONS
  -c FILE
    	the file (FILE)
  -json
    	print JSON
`
	got := Help(help, ".SH", "NAME")
	for _, want := range []string{
		".SH \"SYNOPSIS\"\n.nf\ntool x \\-c FILE\n.fi\n",
		"First paragraph, with a \\-flag and a back\\eslash,\non two lines.\n",
		"\\&.starts with a dot\n",
		".TP\n\\fB\\-c\\fR \\fIFILE\\fR\nthe file (FILE)\n",
		".TP\n\\fB\\-\\-json\\fR\nprint JSON\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("Help lacks %q in:\n%s", want, got)
		}
	}
	if strings.Contains(got, "NAME") {
		t.Errorf("NAME was to be left out:\n%s", got)
	}
	if s := Summary(help); s != "do x" {
		t.Errorf("Summary = %q", s)
	}
	fl := Flags(help)
	if len(fl) != 2 || fl[0] != (Flag{"c", "FILE", "the file (FILE)"}) || fl[1] != (Flag{"json", "", "print JSON"}) {
		t.Errorf("Flags = %+v", fl)
	}
}

func TestDefinitions(t *testing.T) {
	tests := []struct {
		block []string
		items int
		ok    bool
	}{
		{[]string{"run   Run it", "      more", "check Check"}, 2, true},
		{[]string{"a plain paragraph  with two spaces"}, 0, false},
		{[]string{"run   Run it", "  misaligned"}, 0, false},
		{[]string{"one line only"}, 0, false},
	}
	for _, tt := range tests {
		items, _, ok := definitions(tt.block)
		if ok != tt.ok || len(items) != tt.items {
			t.Errorf("definitions(%q) = %v, %v; want %d items, %v", tt.block, items, ok, tt.items, tt.ok)
		}
	}
}

func TestMarkdown(t *testing.T) {
	md := "# Title\n\nIntro with `code-x` and **bold** and *em* and a [link](#x).\n\n" +
		"## Section\n\n### Sub `key`\n\n```yaml\n.dot: 1\nback\\slash: \"—\"\n```\n\n" +
		"| key | default | meaning |\n|---|---|---|\n| `a.b` | `1` | What `a|b` means. |\n\n" +
		"1. First\n   continued\n\n   Indented paragraph.\n2. Second\n- bullet\n\nAfter.\n"
	got := Markdown(Header{Name: "t", Section: 5, Source: "s", Manual: "m", Summary: "sum"}, md)
	for _, want := range []string{
		".TH \"T\" 5 \"\" \"s\" \"m\"\n.SH NAME\nt \\- sum\n.SH DESCRIPTION\n.PP\n",
		"Intro with \\fBcode-x\\fR and \\fBbold\\fR and \\fIem\\fR and a link.\n",
		".SH \"SECTION\"\n.SS \"Sub \\fBkey\\fR\"\n",
		".nf\n\\&.dot: 1\nback\\eslash: \"\\[u2014]\"\n.fi\n",
		".TP\n\\fBa.b\\fR\nDefault: \\fB1\\fR.\nWhat \\fBa|b\\fR means.\n",
		".IP 1. 4\nFirst\ncontinued\n.IP \"\" 4\nIndented paragraph.\n.IP 2. 4\nSecond\n.IP \\(bu 4\nbullet\n.PP\nAfter.\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("Markdown lacks %q in:\n%s", want, got)
		}
	}
	if strings.Contains(got, "Title") {
		t.Errorf("the level-one title was to be left out:\n%s", got)
	}
}
