package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/fqdngate/fqdngate/docs"
	"github.com/fqdngate/fqdngate/internal/completion"
	"github.com/fqdngate/fqdngate/internal/manpage"
)

const manHelp = `NAME
    fqdngate man - print a manual page

SYNOPSIS
    fqdngate man fqdngate|fqdngate-policy

DESCRIPTION
    Prints a manual page in roff on standard output, generated from what
    this binary carries, so it always matches the binary:

    fqdngate         fqdngate(1): the usage and every command's --help,
                     options included.
    fqdngate-policy  fqdngate-policy(5): the policy file, from
                     docs/policy.md.

    The Debian package installs both; to read one without installing,
    pipe it to man -l -.

EXAMPLES
    fqdngate man fqdngate | man -l -
    fqdngate man fqdngate-policy | gzip -9n > /usr/share/man/man5/fqdngate-policy.5.gz
`

const completionHelp = `NAME
    fqdngate completion - print shell completion for bash, zsh or fish

SYNOPSIS
    fqdngate completion bash|zsh|fish

DESCRIPTION
    Prints a script that completes fqdngate's commands, subcommands and
    options, and file names where a command takes a file. It is
    generated from the same command list and help as the man page.

EXAMPLES
    source <(fqdngate completion bash)
    fqdngate completion bash > /usr/share/bash-completion/completions/fqdngate
    fqdngate completion zsh > "${fpath[1]}/_fqdngate"
    fqdngate completion fish > ~/.config/fish/completions/fqdngate.fish
`

// fullHelp is what "fqdngate NAME [SUB] --help" prints: the help and,
// for a command with options, the options. Subcommands share their
// command's options, so the first one's are the command's.
func fullHelp(c command) string {
	args := []string{c.name, "--help"}
	if len(c.subs) > 0 {
		args = []string{c.name, c.subs[0], "--help"}
	}
	var out bytes.Buffer
	run(context.Background(), args, &out, io.Discard)
	return out.String()
}

// manPage is fqdngate(1): the usage, then one section per command.
func manPage() string {
	var b strings.Builder
	b.WriteString(".TH FQDNGATE 1 \"\" \"" + versionString() + "\" \"fqdngate manual\"\n")
	b.WriteString(manpage.Help(usage, ".SH"))
	for _, c := range commands() {
		h := fullHelp(c)
		fmt.Fprintf(&b, ".SH \"FQDNGATE %s\"\n", strings.ToUpper(c.name))
		b.WriteString(manpage.Help(h, ".SS", "NAME"))
	}
	b.WriteString(".SH \"SEE ALSO\"\n.BR fqdngate\\-policy (5),\n.BR systemctl (1),\n.BR nft (8)\n")
	return b.String()
}

func policyPage() string {
	return manpage.Markdown(manpage.Header{
		Name: "fqdngate-policy", Section: 5, Source: versionString(), Manual: "fqdngate manual",
		Summary: "the fqdngate policy file",
	}, docs.Policy)
}

func cmdMan(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	sub, args, code := subcommand("man", manHelp, []string{"fqdngate", "fqdngate-policy"}, args, stdout, stderr)
	if code >= 0 {
		return code
	}
	fs := flagSet("man "+sub, manHelp, stdout, stderr)
	if code := parse(fs, args, stdout); code >= 0 {
		return code
	}
	if sub == "fqdngate" {
		fmt.Fprint(stdout, manPage())
	} else {
		fmt.Fprint(stdout, policyPage())
	}
	return 0
}

// completionCommands describes the commands for completion.
func completionCommands() []completion.Command {
	var out []completion.Command
	for _, c := range commands() {
		cc := completion.Command{Name: c.name, Summary: manpage.Summary(c.help), Subs: c.subs}
		for _, f := range manpage.Flags(fullHelp(c)) {
			cc.Flags = append(cc.Flags, completion.Flag{Name: f.Name, Arg: f.Arg, Usage: f.Usage})
		}
		out = append(out, cc)
	}
	return out
}

func cmdCompletion(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	sub, args, code := subcommand("completion", completionHelp, completion.Shells, args, stdout, stderr)
	if code >= 0 {
		return code
	}
	fs := flagSet("completion "+sub, completionHelp, stdout, stderr)
	if code := parse(fs, args, stdout); code >= 0 {
		return code
	}
	if err := completion.Write(stdout, sub, "fqdngate", completionCommands()); err != nil {
		fmt.Fprintf(stderr, "fqdngate completion: %v\n", err)
		return 1
	}
	return 0
}
