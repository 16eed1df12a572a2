// Command deb builds fqdngate's Debian package with nfpm's Go packages:
// the static binary, the systemd unit, the manual pages and shell
// completions the binary generates, an example policy installed as the
// conffile /etc/fqdngate/policy.yaml, and the policy documentation.
//
// It is a module of its own so that nfpm's dependencies stay out of the
// daemon's go.mod. "make deb" builds the binary and runs it:
//
//	cd tools/deb && go run . -binary ../../fqdngate -repo ../.. -version v1.2.3 -out ../../dist
package main

import (
	"flag"
	"fmt"
	"os"
)

func main() {
	var o Options
	flag.StringVar(&o.Binary, "binary", "", "the static fqdngate `BINARY` to package (make build)")
	flag.StringVar(&o.Repo, "repo", "../..", "the repository's `DIR`, for the unit, the example policy and the docs")
	flag.StringVar(&o.Version, "version", "", "the `VERSION` (git describe): v1.2.3, v1.2.3-4-gabcdef0, or a commit")
	flag.StringVar(&o.Arch, "arch", "amd64", "Debian `ARCH`itecture of the binary")
	flag.StringVar(&o.Out, "out", ".", "`DIR` to write the .deb to")
	flag.Parse()
	if o.Binary == "" || o.Version == "" || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "deb: give -binary BINARY and -version VERSION (see -help)")
		os.Exit(2)
	}
	path, err := Build(o)
	if err != nil {
		fmt.Fprintf(os.Stderr, "deb: %v\n", err)
		os.Exit(1)
	}
	fmt.Println(path)
}
