#!/usr/bin/env bash
# Quick A/B of two fqdngate binaries on the explicit proxy, alternating runs
# so drift on a shared machine hits both alike. Not a substitute for run.sh.
#
#   bash bench/proxy/ab.sh OLD_BIN NEW_BIN
#   bash bench/proxy/ab.sh history [BIN]
#
# "history" measures what the decision history costs: the same binary
# (BIN, or one built from this tree) with history: {enabled: false} as A
# and history on, in a scratch file, as B. The last lines are the medians
# per test and B ÷ A (issue 14's target: 0.95 or more for requests/s).
#
# Settings (environment): ROUNDS=3, DURATION=5, TESTS="short32 short256 http";
# RULE_A, RULE_B: more keys for the bench rule of A or B, one "key: value"
# (for instance RULE_B="inspect_tunnels: false" to measure what inspecting
# tunnels costs, with the same binary as A and B); POLICY_A, POLICY_B: more
# top-level keys of A's or B's policy, one line (for instance
# POLICY_B="history: {path: /tmp/h.db}" to measure the decision history).
# Prints one raw line per run (loadgen or wrk figures, with proxy CPU).
# Traffic goes to 127.0.0.1 only.
set -euo pipefail
HIST=0
if [[ ${1:-} == history ]]; then
	HIST=1 A=${2:-} B=${2:-}
else
	A=${1:?usage: ab.sh OLD_BIN NEW_BIN, or ab.sh history [BIN]} B=${2:?usage: ab.sh OLD_BIN NEW_BIN}
fi
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
TESTS=${TESTS:-short32 short256 http}
PORT=18095
SINK=127.0.0.1:19021
ECHO=127.0.0.1:19022
HTTPB=127.0.0.1:19023
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=$(mktemp -d)
ulimit -n "$(ulimit -Hn)" || true
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$OUT"
}
trap cleanup EXIT
(cd "$ROOT" && go build -o "$OUT/loadgen" ./bench/proxy/loadgen)
if [[ $HIST == 1 ]]; then
	if [[ -z $A ]]; then
		(cd "$ROOT" && go build -o "$OUT/fqdngate" ./cmd/fqdngate)
		A=$OUT/fqdngate B=$OUT/fqdngate
	fi
	POLICY_A="history: {enabled: false}"
	POLICY_B="history: {path: $OUT/history.db}"
fi
LG=$OUT/loadgen
for which in A B; do
	extra=${RULE_A:-} top=${POLICY_A:-}
	[[ $which == B ]] && extra=${RULE_B:-} top=${POLICY_B:-}
	cat >"$OUT/fq-$which.yaml" <<YAML
listen: {dns: "", proxy: 127.0.0.1:$PORT, admin: ""}
dns: {upstreams: [127.0.0.1:53]}
proxy: {deny_private: true, max_conns: 100000, idle_timeout: 5m}
log: {file: /dev/null}
$top
rules:
  - name: bench
    to: [127.0.0.0/8]
    ports: ["1-65535"]
${extra:+    $extra}
YAML
done
wait_port() {
	for _ in $(seq 100); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
		sleep 0.1
	done
	return 1
}
"$LG" serve -sink $SINK -echo $ECHO -http $HTTPB 2>/dev/null &
PIDS+=($!)
wait_port "${HTTPB##*:}"
for r in $(seq "$ROUNDS"); do
	for which in A B; do
		bin=$A
		[[ $which == B ]] && bin=$B
		"$bin" run -c "$OUT/fq-$which.yaml" >/dev/null 2>&1 &
		pid=$!
		PIDS+=("$pid")
		wait_port $PORT
		for t in $TESTS; do
			case $t in
			short*) line=$("$LG" short -proxy 127.0.0.1:$PORT -pid "$pid" -target $ECHO -c "${t#short}" -t "${DURATION}s") ;;
			bulk*) line=$("$LG" bulk -proxy 127.0.0.1:$PORT -pid "$pid" -target $SINK -n "${t#bulk}" -t "${DURATION}s") ;;
			idle*) line=$("$LG" idle -proxy 127.0.0.1:$PORT -pid "$pid" -target $ECHO -n "${t#idle}") ;;
			http)
				c0=$("$LG" cpu -pid "$pid")
				w=$(wrk -t2 -c32 -d"${DURATION}s" -s "$ROOT/bench/proxy/proxy.lua" "http://127.0.0.1:$PORT/" -- $HTTPB)
				c1=$("$LG" cpu -pid "$pid")
				line=$(echo "$w" | awk -v c0="$c0" -v c1="$c1" '/requests in/ {n=$1} /Requests\/sec/ {r=$2} /Non-2xx|Socket errors/ {e=e" "$0}
					END {printf "rps=%s cpu_us_per_req=%.1f%s", r, (c1-c0)*1e6/n, e}') ;;
			esac
			echo "round=$r bin=$which test=$t $line" | tee -a "$OUT/raw.txt"
			sleep 1
		done
		kill "$pid"
		wait "$pid" 2>/dev/null || true
		sleep 1
	done
done
# Medians per binary and test of the throughput figure (per_s: tunnels/s;
# rps: requests/s; gbps), and B ÷ A.
awk '
	{ for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
	  v = ("per_s" in f) ? f["per_s"] : ("rps" in f) ? f["rps"] : ("gbps" in f) ? f["gbps"] : ""
	  if (v != "") { n[f["bin"], f["test"]]++; vals[f["bin"], f["test"], n[f["bin"], f["test"]]] = v; tests[f["test"]] = 1 }
	  delete f }
	function median(b, t,   k, i, j, x, a) {
		k = n[b, t]; if (!k) return 0
		for (i = 1; i <= k; i++) a[i] = vals[b, t, i] + 0
		for (i = 2; i <= k; i++) { x = a[i]; for (j = i - 1; j >= 1 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
		return k % 2 ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2
	}
	END { for (t in tests) { ma = median("A", t); mb = median("B", t)
		printf "median test=%s A=%g B=%g B/A=%s\n", t, ma, mb, ma ? sprintf("%.3f", mb / ma) : "NA" } }
' "$OUT/raw.txt"
