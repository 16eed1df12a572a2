// Command kube-apiserver is the upstream Kubernetes API server, built from the
// Go module proxy for fqdngate's tests (internal/testutil/kubetest). Its main
// is upstream's cmd/kube-apiserver main; this module only pins the release and
// keeps k8s.io/kubernetes out of fqdngate's own go.mod.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // the JSON log format, as upstream registers it
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics, as upstream registers them
	_ "k8s.io/component-base/metrics/prometheus/version"  // the version metric, as upstream registers it
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
