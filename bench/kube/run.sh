#!/usr/bin/env bash
# Kubernetes node agent benchmark (issue 13): how fast the kernel follows
# the cluster. Both benchmarks live in test/e2e (kube_bench_test.go) and run
# the real fqdngate binary as a node agent (hook forward, mode node) in a
# network namespace, against a real kube-apiserver v1.37.2 and Debian's
# etcd started inside it (internal/testutil/kubetest), reading the kernel's
# pod sets over netlink.
#
#   sudo bash bench/kube/run.sh                    # the full run: 10,000 pods
#   sudo PODS=20 MANY=300 CHANGES=20 bash bench/kube/run.sh   # a smoke run
#
# 1. BenchmarkKubePodToKernel: pod created (the Pod object, then its status
#    with status.podIPs, as a kubelet writes it) to its address in the
#    kernel's pod set of its group: p50/p99 over PODS pods.
# 2. BenchmarkKubeManyPods: MANY pods in 100 groups on one agent: the
#    agent's RSS once all are in the kernel, and one label change
#    (SetPodLabels moving a pod to another group) to the kernel's sets
#    following: p50/p99 over CHANGES changes. It first checks that every
#    pod is in the kernel (the pod sets hold MANY addresses). Creating the
#    pods is serial through the API (about 25 s per 1000 on a loaded
#    2-core machine, so 4 to 5 minutes for 10,000).
#
# Needs root, kube-apiserver (tools/kube-apiserver/build.sh) and etcd
# (apt-get install etcd-server). Output goes to OUT (default
# bench/kube/results/<UTC timestamp>.txt).
#
# Settings (environment): PODS=200 MANY=10000 CHANGES=200 COUNT=1.
# MANY=0 skips the second benchmark.
set -euo pipefail
cd "$(dirname "$0")/../.."
PODS=${PODS:-200} MANY=${MANY:-10000} CHANGES=${CHANGES:-200} COUNT=${COUNT:-1}
OUT=${OUT:-bench/kube/results/$(date -u +%Y%m%dT%H%M%SZ).txt}
mkdir -p "$(dirname "$OUT")"
{
	echo "# $(date -u +%FT%TZ) $(uname -r) $(nproc) cores; PODS=$PODS MANY=$MANY CHANGES=$CHANGES"
	go test -count="$COUNT" -run '^$' -bench '^BenchmarkKubePodToKernel$' -benchtime="${PODS}x" -timeout 30m ./test/e2e/
	if [ "$MANY" -gt 0 ]; then
		FQDNGATE_BENCH_PODS=$MANY go test -count="$COUNT" -run '^$' -bench '^BenchmarkKubeManyPods$' \
			-benchtime="${CHANGES}x" -timeout 60m ./test/e2e/
	fi
} 2>&1 | grep -Ev '^\s+[IEW][0-9]{4} ' | tee "$OUT"
