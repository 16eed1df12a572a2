#!/usr/bin/env bash
# Builds the kube-apiserver that fqdngate's tests start (internal/testutil/kubetest)
# from the Go module proxy, to $(go env GOPATH)/bin/kube-apiserver (or $1).
#
# The first build compiles all of Kubernetes' API server: about 10 minutes on 2
# cores. The Go build cache keeps the compiled packages, and a binary newer than
# this module's files is kept as it is, so later runs take seconds.
set -euo pipefail
cd "$(dirname "$0")"

version=v1.37.2
out="${1:-$(go env GOPATH)/bin/kube-apiserver}"

# Replace directives of a dependency do not apply to the main module, so this
# module replaces each k8s.io/* module that kubernetes' go.mod points at
# ./staging/... by its published release. Refuse to build if the two lists
# differ (a new staging module appeared, or go.mod was edited by hand).
go mod download k8s.io/kubernetes
kdir=$(go list -m -f '{{.Dir}}' k8s.io/kubernetes)
want=$(awk '$2 == "=>" && $3 ~ /^\.\/staging\// {print $1}' "$kdir/go.mod" | sort)
release=v0.${version#v1.}   # v1.37.2 -> v0.37.2
have=$(awk -v r="$release" '$2 == "=>" && $4 == r {print $1}' go.mod | sort)
if [ "$want" != "$have" ]; then
  echo "build.sh: go.mod's replace list differs from the staging modules of k8s.io/kubernetes $version:" >&2
  diff <(echo "$want") <(echo "$have") >&2 || true
  echo "build.sh: make go.mod replace exactly the modules on the left, each at $release" >&2
  exit 1
fi

if [ -x "$out" ] && "$out" --version 2>/dev/null | grep -qx "Kubernetes $version" &&
   [ "$out" -nt go.mod ] && [ "$out" -nt go.sum ] && [ "$out" -nt main.go ] && [ "$out" -nt build.sh ]; then
  echo "kube-apiserver $version is up to date at $out"
  exit 0
fi

# The version variables are the ones Kubernetes' own release build sets
# (hack/lib/version.sh); without them the server calls itself v0.0.0 and
# derives its emulation version and feature gates from that.
pkg=k8s.io/component-base/version
minor=$(echo "$version" | cut -d. -f2)
ldflags="-s -w -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=$version"

mkdir -p "$(dirname "$out")"
start=$(date +%s)
go build -ldflags="$ldflags" -o "$out.tmp" .
mv "$out.tmp" "$out"
echo "built kube-apiserver $version at $out in $(( $(date +%s) - start ))s ($(du -h "$out" | cut -f1))"
