#!/usr/bin/env bash
# paired.sh RAW.TSV: the targets' ratios round by round. The VM's speed
# drifts over minutes (other guests on the host; the upstream alone ran
# between 0.24 and 0.45 million queries/s in one run), so a ratio of two
# runs taken a minute apart says more than a ratio of two medians taken
# over half an hour. For each round where both sides of a comparison have
# a clean run, prints the ratio; then the median of those ratios.
set -euo pipefail
raw=${1:?usage: paired.sh raw.tsv}
awk -F'\t' '
	NR == 1 { next }
	{ qps[$1, $2] = $3; ok[$1, $2] = ($13 == "yes"); p50[$1, $2] = $5; if ($1 > rounds) rounds = $1 }
	function median(a, n,   i, j, t) {
		for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
		return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
	}
	function pair(title, a, b, b2,   r, n, list, v, other, rs) {
		n = 0; list = ""
		for (r = 1; r <= rounds; r++) {
			if (!((r, a) in qps) || !ok[r, a]) continue
			other = ""
			if (((r, b) in qps) && ok[r, b]) other = b
			if (b2 != "" && ((r, b2) in qps) && ok[r, b2] && (other == "" || qps[r, b2] > qps[r, b])) other = b2
			if (other == "") continue
			v = qps[r, a] / qps[r, other]
			rs[++n] = v
			list = list sprintf("%sround %d: %.0f / %.0f (%s) = %.2f", list == "" ? "" : "; ", r, qps[r, a], qps[r, other], other, v)
		}
		if (n == 0) { printf "- %s: no round with clean runs of both\n", title; return }
		printf "- %s: median %.2f over %d rounds (%s)\n", title, median(rs, n), n, list
	}
	END {
		pair("fqdngate cache on ÷ dnsmasq cache on, queries/s", "fqdngate-cache", "dnsmasq-cache", "")
		pair("fqdngate cache off ÷ the faster of dnsmasq and CoreDNS cache off, queries/s", "fqdngate-nocache", "dnsmasq-nocache", "coredns-nocache")
		pair("fqdngate cache on ÷ CoreDNS cache on, queries/s", "fqdngate-cache", "coredns-cache", "")
		# The decision history: SERVERS with fqdngate-hist-* beside
		# fqdngate-* (history off); 0.95 or more meets issue 14.
		for (r = 1; r <= rounds; r++) if ((r, "fqdngate-hist-cache") in qps || (r, "fqdngate-hist-nocache") in qps) hist = 1
		if (hist) {
			pair("history on ÷ off, cache on, queries/s (target >= 0.95)", "fqdngate-hist-cache", "fqdngate-cache", "")
			pair("history on ÷ off, cache off, queries/s (target >= 0.95)", "fqdngate-hist-nocache", "fqdngate-nocache", "")
		}
		for (r = 1; r <= rounds; r++) if ((r, "base-cache") in qps || (r, "base-nocache") in qps) base = 1
		if (base) {
			pair("fqdngate cache on ÷ base cache on (BASE_REF), queries/s", "fqdngate-cache", "base-cache", "")
			pair("fqdngate cache off ÷ base cache off (BASE_REF), queries/s", "fqdngate-nocache", "base-nocache", "")
		}
	}' "$raw"
