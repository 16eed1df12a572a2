package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/fqdngate/fqdngate/internal/importer"
)

const importHelp = `NAME
    fqdngate import - translate Cilium, Calico or NetworkPolicy API FQDN
    policies into an fqdngate policy fragment

SYNOPSIS
    fqdngate import cilium|calico|npep [-n NAMESPACE] FILE...

DESCRIPTION
    Reads the Kubernetes manifests in FILE... (YAML or JSON, several
    documents separated by ---, or a List as kubectl get -o yaml prints
    it; - is standard input) and
    prints on standard output the fqdngate sources (kubernetes: pod
    selectors) and rules they amount to, each after a comment naming the
    input position it came from.

    cilium  CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy: egress
            toFQDNs (matchName, matchPattern) with toPorts.
    calico  NetworkPolicy (projectcalico.org), GlobalNetworkPolicy: egress
            Allow rules with destination.domains, or a destination
            selector matching a NetworkSet or GlobalNetworkSet with
            allowedEgressDomains (give the sets' files too).
    npep    ClusterNetworkPolicy (v1alpha2, action Accept) and
            AdminNetworkPolicy (v1alpha1, action Allow): egress to
            domainNames.

    Wildcards keep their meaning: Cilium's *.x is one label (fqdngate's
    *.x), Calico's and the NetworkPolicy API's *.x one or more labels
    (fqdngate's **.x). Whatever has no exact fqdngate equivalent (a '*'
    inside a name, a bare '*', Deny rules, L7 rules, selector forms other
    than the simple ones, CIDR and in-cluster peers) is not translated and
    is listed on standard error as file:line:col: what and why. A part
    that would make a rule allow more than the original (an L7 rule, a
    negated match) drops the whole rule; nothing is widened.

    Review the output, merge it into a policy, and run fqdngate check.
    See docs/kubernetes.md.

EXIT STATUS
    0 everything was translated; 1 something was not (see standard
    error), or a FILE could not be read; 2 wrong usage.

EXAMPLES
    fqdngate import cilium cnp.yaml > imported.yaml
    kubectl get cnp -A -o yaml | fqdngate import cilium -
    fqdngate import calico -n payments policies.yaml networksets.yaml
`

func cmdImport(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	sub, args, code := subcommand("import", importHelp, importer.Dialects, args, stdout, stderr)
	if code >= 0 {
		return code
	}
	d, err := importer.ParseDialect(sub)
	if err != nil {
		fmt.Fprintf(stderr, "fqdngate import: %v\n", err)
		return 2
	}
	fs := flagSet("import "+sub, importHelp, stdout, stderr)
	ns := fs.String("n", "default", "the `NAMESPACE` of namespaced objects whose metadata names none (as kubectl's -n)")
	files, code := parseArgs(fs, args, stdout, 0, 1<<20)
	if code >= 0 {
		return code
	}
	if len(files) == 0 {
		fmt.Fprintf(stderr, "fqdngate import %s: give the files to translate (- for standard input)\n", sub)
		return 2
	}
	var inputs []importer.Input
	for _, f := range files {
		var data []byte
		var err error
		if f == "-" {
			data, err = io.ReadAll(os.Stdin)
		} else {
			data, err = os.ReadFile(f)
		}
		if err != nil {
			fmt.Fprintf(stderr, "fqdngate import: %v\n", err)
			return 1
		}
		inputs = append(inputs, importer.Input{Name: f, Data: data})
	}
	res := importer.Import(d, inputs, importer.Options{Namespace: *ns})
	fmt.Fprint(stdout, res.Policy)
	for _, p := range res.Problems {
		fmt.Fprintln(stderr, p)
	}
	if len(res.Problems) > 0 {
		fmt.Fprintf(stderr, "fqdngate import %s: translated %s for %s; %s not (listed above)\n",
			sub, plural(res.Rules, "rule"), plural(res.Groups, "source group"), plural(len(res.Problems), "part"))
		return 1
	}
	return 0
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
