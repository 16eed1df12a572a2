#!/bin/bash
# rep2.sh TAG FQ_CPUS PERF_CPUS [ENV...]: one fresh fqdngate (cache on), warm, dnsperf 10 s under perf stat
tag=$1 fqc=$2 pfc=$3; shift 3
cd /tmp/bim
pre=(); [[ -n $fqc ]] && pre=(taskset -c $fqc)
env "$@" "${pre[@]}" ${BIN:-./fqdngate} run -c cache.yaml >fq.log 2>&1 &
P=$!
for i in $(seq 50); do dig +short +tries=1 +time=1 @127.0.0.1 -p 15353 n0.bench.example A 2>/dev/null | grep -q . && break; sleep 0.1; done
dnsperf -s 127.0.0.1 -p 15353 -d q.txt -c 4 -q 200 -t 2 -n 1 >/dev/null 2>&1
ppre=(); [[ -n $pfc ]] && ppre=(taskset -c $pfc)
perf stat -x, -o perf.txt -e task-clock,context-switches,cpu-migrations,syscalls:sys_enter_recvmmsg,syscalls:sys_enter_sendmmsg,syscalls:sys_enter_epoll_pwait,syscalls:sys_enter_futex,syscalls:sys_enter_nanosleep -p $P -- sleep 10.5 &
SP=$!
out=$("${ppre[@]}" dnsperf -s 127.0.0.1 -p 15353 -d q.txt -c 4 -q 200 -t 2 -l 10 2>&1)
wait $SP
qps=$(echo "$out" | awk '/Queries per second/{print $4}'); n=$(echo "$out" | awk '/Queries completed/{print $3}')
cpus=$(for t in /proc/$P/task/*; do awk '{print $39}' $t/stat; done | sort | uniq -c | tr -s ' \n' ' ')
awk -F, -v n=$n -v tag=$tag -v qps=$qps -v cpus="$cpus" '
  /task-clock/ {tc=$1} /context-switches/ {cs=$1} /cpu-migrations/ {mig=$1}
  /recvmmsg/ {rm=$1} /sendmmsg/ {sm=$1} /epoll_pwait/ {ep=$1} /futex/ {fx=$1} /nanosleep/ {ns=$1}
  END {printf "%s\tqps=%.0f\tcpu_us/q=%.2f\tans/recvmmsg=%.1f\tans/sendmmsg=%.1f\tans/epoll=%.1f\tans/ctxsw=%.1f\tfutex/kq=%.0f\tnanosleep/kq=%.0f\tmig=%d\tthreads_on_cpu=%s\n", tag, qps, tc*1000/n, n/rm, n/sm, n/ep, n/cs, fx*1000/n, ns*1000/n, mig, cpus}' perf.txt
kill $P; wait $P 2>/dev/null
