#!/usr/bin/env bash
# genqueries.sh [N]: prints N (default 100,000) distinct allowed names in
# dnsperf's query-file format, "n<i>.bench.example A", one a line.
set -euo pipefail
awk -v n="${1:-100000}" 'BEGIN { for (i = 0; i < n; i++) print "n" i ".bench.example A" }'
