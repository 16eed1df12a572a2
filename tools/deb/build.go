package main

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/goreleaser/nfpm/v2"
	_ "github.com/goreleaser/nfpm/v2/deb" // registers the deb packager
	"github.com/goreleaser/nfpm/v2/files"
)

// Options say what to package.
type Options struct {
	Binary  string // the static fqdngate
	Repo    string // the repository's root
	Version string // git describe
	Arch    string // Debian architecture
	Out     string // directory for the .deb
}

// Where the package puts things; the unit's ExecStart names Bin.
const (
	Bin      = "/usr/bin/fqdngate"
	Unit     = "/usr/lib/systemd/system/fqdngate.service"
	Policy   = "/etc/fqdngate/policy.yaml"
	Man1     = "/usr/share/man/man1/fqdngate.1.gz"
	Man5     = "/usr/share/man/man5/fqdngate-policy.5.gz"
	Bash     = "/usr/share/bash-completion/completions/fqdngate"
	Zsh      = "/usr/share/zsh/vendor-completions/_fqdngate"
	Fish     = "/usr/share/fish/vendor_completions.d/fqdngate.fish"
	DocDir   = "/usr/share/doc/fqdngate"
	unitPath = "deploy/systemd/fqdngate.service"
)

// Build writes the .deb into o.Out and returns its path. Everything is
// prepared in a temporary directory first; the package file appears only
// once it is complete.
func Build(o Options) (string, error) {
	stage, err := os.MkdirTemp("", "fqdngate-deb")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(stage)
	gen := func(name string, gz bool, args ...string) (string, error) {
		out, err := exec.Command(o.Binary, args...).Output()
		if err != nil {
			return "", fmt.Errorf("%s %s: %w", o.Binary, strings.Join(args, " "), err)
		}
		if gz {
			var b bytes.Buffer
			w, _ := gzip.NewWriterLevel(&b, gzip.BestCompression) // no name, no time: reproducible
			w.Write(out)
			w.Close()
			out = b.Bytes()
		}
		p := filepath.Join(stage, name)
		return p, os.WriteFile(p, out, 0o644)
	}
	type item struct {
		src, dst, typ string
		mode          os.FileMode
	}
	items := []item{
		{o.Binary, Bin, "", 0o755},
		{filepath.Join(o.Repo, "examples/quickstart.yaml"), Policy, files.TypeConfigNoReplace, 0o644},
		{filepath.Join(o.Repo, "examples/gateway.yaml"), DocDir + "/examples/gateway.yaml", "", 0o644},
		{filepath.Join(o.Repo, "examples/quickstart.yaml"), DocDir + "/examples/quickstart.yaml", "", 0o644},
		{filepath.Join(o.Repo, "docs/policy.md"), DocDir + "/policy.md", "", 0o644},
		{filepath.Join(o.Repo, "docs/operations.md"), DocDir + "/operations.md", "", 0o644},
		{filepath.Join(o.Repo, "README.md"), DocDir + "/README.md", "", 0o644},
	}
	for _, g := range []struct {
		name, dst string
		gz        bool
		args      []string
	}{
		{"fqdngate.1.gz", Man1, true, []string{"man", "fqdngate"}},
		{"fqdngate-policy.5.gz", Man5, true, []string{"man", "fqdngate-policy"}},
		{"fqdngate.bash", Bash, false, []string{"completion", "bash"}},
		{"_fqdngate", Zsh, false, []string{"completion", "zsh"}},
		{"fqdngate.fish", Fish, false, []string{"completion", "fish"}},
	} {
		p, err := gen(g.name, g.gz, g.args...)
		if err != nil {
			return "", err
		}
		items = append(items, item{p, g.dst, "", 0o644})
	}
	unit, err := packagedUnit(filepath.Join(o.Repo, unitPath))
	if err != nil {
		return "", err
	}
	unitFile := filepath.Join(stage, "fqdngate.service")
	if err := os.WriteFile(unitFile, unit, 0o644); err != nil {
		return "", err
	}
	items = append(items, item{unitFile, Unit, "", 0o644})

	scripts := map[string]string{"postinst": postinst, "prerm": prerm, "postrm": postrm}
	for name, body := range scripts {
		if err := os.WriteFile(filepath.Join(stage, name), []byte(body), 0o755); err != nil {
			return "", err
		}
	}

	var contents files.Contents
	for _, it := range items {
		if _, err := os.Stat(it.src); err != nil {
			return "", err
		}
		contents = append(contents, &files.Content{
			Source: it.src, Destination: it.dst, Type: it.typ,
			FileInfo: &files.ContentFileInfo{Mode: it.mode, Owner: "root", Group: "root"},
		})
	}
	info := nfpm.WithDefaults(&nfpm.Info{
		Name:          "fqdngate",
		Arch:          o.Arch,
		Platform:      "linux",
		Version:       debVersion(o.Version),
		VersionSchema: "none",
		Section:       "net",
		Priority:      "optional",
		Maintainer:    "fqdngate maintainers <fqdngate@example.org>",
		Description: "domain-name based egress control: DNS firewall, nftables, proxy\n" +
			"fqdngate lets hosts reach only the external names a policy lists:\n" +
			"a DNS firewall that answers allowlisted names only, nftables sets of\n" +
			"the addresses it hands out, and an egress proxy checking names, from\n" +
			"one YAML policy. Installed, it starts nothing: edit\n" +
			"/etc/fqdngate/policy.yaml, then systemctl enable --now fqdngate.",
		Homepage: "https://github.com/fqdngate/fqdngate",
		Overridables: nfpm.Overridables{
			Contents: contents,
			Scripts: nfpm.Scripts{
				PostInstall: filepath.Join(stage, "postinst"),
				PreRemove:   filepath.Join(stage, "prerm"),
				PostRemove:  filepath.Join(stage, "postrm"),
			},
		},
	})
	if err := nfpm.PrepareForPackager(info, "deb"); err != nil {
		return "", fmt.Errorf("preparing the package: %w", err)
	}
	pkg, err := nfpm.Get("deb")
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return "", err
	}
	path := filepath.Join(o.Out, pkg.ConventionalFileName(info))
	tmp, err := os.CreateTemp(o.Out, ".fqdngate-*.deb")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	if err := pkg.Package(info, tmp); err != nil {
		tmp.Close()
		return "", fmt.Errorf("writing the package: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return "", err
	}
	return path, os.Rename(tmp.Name(), path)
}

// packagedUnit is the repository's unit with the packaged binary's path
// and a header for the package instead of the manual install notes.
func packagedUnit(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	s := string(b)
	i := strings.Index(s, "[Unit]")
	if i < 0 {
		return nil, fmt.Errorf("%s has no [Unit] section", path)
	}
	s = "# fqdngate as a systemd service, installed by the fqdngate package.\n" +
		"# Change it with systemctl edit fqdngate; the policy is " + Policy + ".\n" +
		"# Reload the policy: systemctl reload fqdngate (or just save the file).\n" + s[i:]
	if !strings.Contains(s, "/usr/local/bin/fqdngate") {
		return nil, fmt.Errorf("%s no longer runs /usr/local/bin/fqdngate; update packagedUnit", path)
	}
	return []byte(strings.ReplaceAll(s, "/usr/local/bin/fqdngate", Bin)), nil
}

var (
	tagged = regexp.MustCompile(`^v?(\d+\.\d+\.\d+)(?:-(.*))?$`)
	unsafe = regexp.MustCompile(`[^A-Za-z0-9.+~]`)
)

// debVersion turns git describe's output into a Debian version: v1.2.3
// is 1.2.3, v1.2.3-4-gabc is 1.2.3+4.gabc (after 1.2.3, before 1.2.4),
// and an untagged commit abc is 0.0.0+git.abc.
func debVersion(v string) string {
	if m := tagged.FindStringSubmatch(v); m != nil {
		if m[2] == "" {
			return m[1]
		}
		return m[1] + "+" + unsafe.ReplaceAllString(m[2], ".")
	}
	return "0.0.0+git." + unsafe.ReplaceAllString(v, ".")
}

// The maintainer scripts start nothing: installing a firewall must not
// change what the host may reach until someone enables it. They only
// tell systemd about the unit (when systemd runs), stop the service
// before its binary goes, and forget it when it is gone.
const postinst = `#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
fi
if [ "$1" = configure ] && [ -z "$2" ]; then
	echo "fqdngate is installed but not started: edit /etc/fqdngate/policy.yaml,"
	echo "check it with fqdngate check -c /etc/fqdngate/policy.yaml, then"
	echo "systemctl enable --now fqdngate."
fi
exit 0
`

const prerm = `#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
	systemctl stop fqdngate.service || true
	# The nftables table outlives the daemon (it never fails open):
	# fqdngate firewall remove -c /etc/fqdngate/policy.yaml takes it away.
fi
exit 0
`

const postrm = `#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
fi
exit 0
`
