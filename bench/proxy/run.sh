#!/usr/bin/env bash
# Egress proxy benchmark: fqdngate's explicit proxy against squid and
# tinyproxy (Debian packages) and a direct connection, with bench/proxy/loadgen
# as the client and the backends.
#
#   bash bench/proxy/run.sh
#
# For every repetition and every proxy: start it fresh, check that CONNECT
# and absolute-form GET pass, then measure
#   bulk1, bulk16     CONNECT bulk throughput (client pushes, sink discards)
#                     with 1 and 16 tunnels, and proxy CPU-s per GiB carried
#   short1/32/256     short tunnels per second at concurrency 1, 32, 256
#                     (dial, CONNECT, 64 B up, 64 B down, close), p50/p99,
#                     proxy CPU ms per 1,000 tunnels
#   http              wrk keep-alive GETs in absolute form through the proxy
# and stop it. Repetitions are the outer loop so drift on the machine
# spreads over every proxy alike. Then the memory runs, each on a fresh
# proxy: IDLE_N tunnels opened and held, (RSS held - RSS idle) / IDLE_N.
# Medians go to stdout as markdown; raw lines stay in
# bench/results/tmp/proxy-<timestamp>/raw.txt.
#
# Proxy CPU time is utime+stime of the proxy process and its descendants
# (plus reaped children), read from /proc at the start and end of each
# measured window. Traffic goes to 127.0.0.1 only. Nothing is pinned: the
# load generator, the backends and the proxy share the machine's cores.
#
# Settings (environment):
#   REPS=3            repetitions
#   DURATION=10       measured seconds per loadgen/wrk run (after 1 s warm-up)
#   PROXIES="direct fqdngate squid tinyproxy"
#   TESTS="bulk1 bulk16 short1 short32 short256 http idle"
#   IDLE_N=9500       idle tunnels held (see below for why not 10,000)
#   WRK_THREADS=2 WRK_CONNS=32
#
# RLIMIT_NOFILE: a proxy holding N tunnels needs 2N descriptors. The script
# raises the soft limit to the hard one; where the hard limit cannot be
# raised (no CAP_SYS_RESOURCE, as in some containers, hard limit 20,000),
# 10,000 tunnels (20,000+ descriptors) cannot be held by any proxy, so the
# default is 9,500; set IDLE_N=10000 where `ulimit -Hn` allows it.
set -euo pipefail

REPS=${REPS:-3}
DURATION=${DURATION:-10}
PROXIES=${PROXIES:-direct fqdngate squid tinyproxy}
TESTS=${TESTS:-bulk1 bulk16 short1 short32 short256 http idle}
IDLE_N=${IDLE_N:-9500}
WRK_THREADS=${WRK_THREADS:-2}
WRK_CONNS=${WRK_CONNS:-32}

FQ_PORT=18080
SQ_PORT=18081
TP_PORT=18082
SINK=127.0.0.1:19001
ECHO=127.0.0.1:19002
HTTPB=127.0.0.1:19003

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=$ROOT/bench/results/tmp/proxy-$(date -u +%Y%m%dT%H%M%SZ)
BIN=$OUT/bin
mkdir -p "$OUT" "$BIN"
chmod 777 "$OUT" # squid drops to its own user and writes its log here
RAW=$OUT/raw.txt
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }

ulimit -n "$(ulimit -Hn)" || true
if (($(ulimit -n) < 2 * IDLE_N + 200)); then
	log "ulimit -n is $(ulimit -n): too low for $IDLE_N idle tunnels; set IDLE_N lower"
	exit 1
fi

# Every process this script starts is recorded and stopped by its PID.
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
}
trap cleanup EXIT

# --- build -----------------------------------------------------------------
log "building into $BIN"
(cd "$ROOT" && go build -o "$BIN/loadgen" ./bench/proxy/loadgen)
(cd "$ROOT" && CGO_ENABLED=0 go build -o "$BIN/fqdngate" ./cmd/fqdngate)
LG=$BIN/loadgen

{
	echo "nproc: $(nproc)"
	echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
	echo "kernel: $(uname -sr)"
	echo "go: $(go version)"
	echo "squid: $(squid -v | head -1)"
	echo "tinyproxy: $(tinyproxy -v 2>&1)"
	echo "wrk: $(wrk -v 2>&1 | head -1)"
	echo "fqdngate: $(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet -- internal cmd || echo ' (+uncommitted changes)')"
	echo "ulimit -n: $(ulimit -n)"
	echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$OUT/machine.txt"
cat "$OUT/machine.txt" >&2

# --- configurations ----------------------------------------------------------
cat >"$OUT/fqdngate.yaml" <<EOF
listen: {dns: "", proxy: 127.0.0.1:$FQ_PORT, admin: ""}
dns: {upstreams: [127.0.0.1:53]}   # unused: every target is an IP literal
proxy: {deny_private: true, max_conns: 100000, idle_timeout: 5m}
log: {file: /dev/null}
rules:
  - name: bench
    to: [127.0.0.0/8]              # loopback is private; naming it re-allows it
    ports: ["1-65535"]
EOF

cat >"$OUT/squid.conf" <<EOF
http_port 127.0.0.1:$SQ_PORT
workers 1
http_access allow all
cache deny all
cache_mem 0 MB
access_log none
cache_store_log none
cache_log $OUT/squid-cache.log
pid_filename $OUT/squid.pid
coredump_dir $OUT
max_filedescriptors $(ulimit -n)
pinger_enable off
shutdown_lifetime 1 seconds
via off
forwarded_for delete
dns_nameservers 127.0.0.1
EOF

# No ConnectPort line: tinyproxy then allows CONNECT to every port.
cat >"$OUT/tinyproxy.conf" <<EOF
Port $TP_PORT
Listen 127.0.0.1
Timeout 600
MaxClients 20000
LogLevel Critical
LogFile "$OUT/tinyproxy.log"
PidFile "$OUT/tinyproxy.pid"
DisableViaHeader Yes
EOF

# --- processes ---------------------------------------------------------------
wait_port() { # port
	for _ in $(seq 100); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
		sleep 0.1
	done
	log "nothing listens on 127.0.0.1:$1"
	return 1
}

"$LG" serve -sink $SINK -echo $ECHO -http $HTTPB 2>"$OUT/backends.log" &
PIDS+=($!)
wait_port "${SINK##*:}"
wait_port "${ECHO##*:}"
wait_port "${HTTPB##*:}"

PID=0  # the running proxy
PORT=0 # its port
start_proxy() { # name
	case $1 in
	direct) PID=0 PORT=0; return ;;
	fqdngate)
		"$BIN/fqdngate" run -c "$OUT/fqdngate.yaml" >>"$OUT/fqdngate.log" 2>&1 &
		PID=$! PORT=$FQ_PORT ;;
	squid)
		squid -N -f "$OUT/squid.conf" >>"$OUT/squid.log" 2>&1 &
		PID=$! PORT=$SQ_PORT ;;
	tinyproxy)
		tinyproxy -d -c "$OUT/tinyproxy.conf" >>"$OUT/tinyproxy.out" 2>&1 &
		PID=$! PORT=$TP_PORT ;;
	*) log "unknown proxy $1"; exit 1 ;;
	esac
	PIDS+=("$PID")
	wait_port "$PORT"
	# Both request kinds must pass before anything is measured.
	curl -sS -f -o /dev/null -p -x "http://127.0.0.1:$PORT" "http://$HTTPB/" ||
		{ log "$1: CONNECT through 127.0.0.1:$PORT failed"; exit 1; }
	curl -sS -f -o /dev/null -x "http://127.0.0.1:$PORT" "http://$HTTPB/" ||
		{ log "$1: plain HTTP through 127.0.0.1:$PORT failed"; exit 1; }
}

stop_proxy() {
	if ((PID != 0)); then
		kill "$PID" 2>/dev/null || true
		wait "$PID" 2>/dev/null || true
	fi
	PID=0
	sleep 1
}

# record REP PROXY TEST CMD...: run CMD, prefix its result lines.
record() {
	local rep=$1 proxy=$2 test=$3
	shift 3
	local out
	if ! out=$("$@" 2>&1); then
		log "$proxy $test failed: $out"
		echo "# rep=$rep proxy=$proxy test=$test FAILED: $out" >>"$RAW"
		return 0
	fi
	while IFS= read -r line; do
		case $line in
		\#*) echo "# rep=$rep proxy=$proxy test=$test ${line#\# }" ;;
		*) echo "rep=$rep proxy=$proxy test=$test $line" ;;
		esac
	done <<<"$out" | tee -a "$RAW" >&2
}

dest_args() { # the loadgen flags that reach TARGET through the running proxy
	if ((PID == 0)); then echo "-direct -target $1"; else echo "-proxy 127.0.0.1:$PORT -target $1 -pid $PID"; fi
}

# wrk_run REP PROXY: wrk through the running proxy, with its CPU time.
wrk_run() {
	local rep=$1 proxy=$2 url args c0=0 c1=0 out
	if ((PID == 0)); then
		url=http://$HTTPB/ args=()
	else
		url=http://127.0.0.1:$PORT/ args=(-- "$HTTPB")
		c0=$("$LG" cpu -pid "$PID")
	fi
	out=$(wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"${DURATION}s" --latency \
		-s "$ROOT/bench/proxy/proxy.lua" "$url" "${args[@]}")
	((PID == 0)) || c1=$("$LG" cpu -pid "$PID")
	echo "$out" >>"$OUT/wrk-$proxy-$rep.txt"
	echo "$out" | awk -v rep="$rep" -v proxy="$proxy" -v c0="$c0" -v c1="$c1" -v measured="$((PID != 0))" '
		function ms(s) {
			if (s ~ /us$/) return substr(s, 1, length(s) - 2) / 1000
			if (s ~ /ms$/) return substr(s, 1, length(s) - 2)
			if (s ~ /s$/) return substr(s, 1, length(s) - 1) * 1000
			return s
		}
		/requests in/ { reqs = $1 }
		/^ +50%/ { p50 = ms($2) }
		/^ +99%/ { p99 = ms($2) }
		/Requests\/sec/ { rps = $2 }
		/Non-2xx/ { bad += $NF }
		/Socket errors/ { gsub(/,/, ""); bad += $4 + $8 + $10; rd = $6 }
		END {
			printf "rep=%s proxy=%s test=http rps=%s p50_ms=%.3f p99_ms=%.3f requests=%d errors=%d read_errors=%d",
				rep, proxy, rps, p50, p99, reqs, bad, rd
			if (measured) printf " cpu_s=%.2f cpu_us_per_req=%.1f", c1 - c0, (c1 - c0) * 1e6 / reqs
			printf "\n"
		}' | tee -a "$RAW" >&2
}

has() { [[ " $TESTS " == *" $1 "* ]]; }

# --- throughput and tunnel rate ----------------------------------------------
for rep in $(seq "$REPS"); do
	for proxy in $PROXIES; do
		log "rep $rep/$REPS: $proxy"
		start_proxy "$proxy"
		for n in 1 16; do
			has "bulk$n" || continue
			# shellcheck disable=SC2046
			record "$rep" "$proxy" "bulk$n" "$LG" bulk $(dest_args $SINK) -n "$n" -t "${DURATION}s"
			sleep 1
		done
		for c in 1 32 256; do
			has "short$c" || continue
			# shellcheck disable=SC2046
			record "$rep" "$proxy" "short$c" "$LG" short $(dest_args $ECHO) -c "$c" -t "${DURATION}s"
			sleep 2
		done
		if has http; then wrk_run "$rep" "$proxy"; fi
		stop_proxy
	done
done

# --- memory per idle tunnel --------------------------------------------------
if has idle; then
	for rep in $(seq "$REPS"); do
		for proxy in $PROXIES; do
			[[ $proxy == direct ]] && continue
			log "rep $rep/$REPS: $proxy, $IDLE_N idle tunnels"
			start_proxy "$proxy"
			# shellcheck disable=SC2046
			record "$rep" "$proxy" idle "$LG" idle $(dest_args $ECHO) -n "$IDLE_N"
			stop_proxy
			sleep 2
		done
	done
fi

echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/machine.txt"
log "raw results in $RAW"
cat "$OUT/machine.txt"
echo
echo "Medians of $REPS repetitions, $DURATION s measured per run; idle: $IDLE_N tunnels."
"$LG" report "$RAW"
