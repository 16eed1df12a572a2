package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
)

// column is one column of a result table: the median over repetitions of
// key in the lines of test.
type column struct {
	head, test, key, format string
	span                    bool // also print min–max
}

var tables = []struct {
	title string
	cols  []column
}{
	{"CONNECT bulk throughput (client → proxy → sink, one direction)", []column{
		{"1 tunnel Gbit/s", "bulk1", "gbps", "%.2f", true},
		{"1 tunnel CPU-s/GiB", "bulk1", "cpu_s_per_gib", "%.3f", false},
		{"16 tunnels Gbit/s", "bulk16", "gbps", "%.2f", true},
		{"16 tunnels CPU-s/GiB", "bulk16", "cpu_s_per_gib", "%.3f", false},
	}},
	{"Short tunnels (dial, CONNECT, 64 B request, 64 B reply, close)", []column{
		{"c=1 /s", "short1", "per_s", "%.0f", false},
		{"c=1 p50 ms", "short1", "p50_ms", "%.3f", false},
		{"c=1 p99 ms", "short1", "p99_ms", "%.3f", false},
		{"c=1 CPU ms/1k", "short1", "cpu_ms_per_1000", "%.0f", false},
		{"c=32 /s", "short32", "per_s", "%.0f", true},
		{"c=32 p50 ms", "short32", "p50_ms", "%.2f", false},
		{"c=32 p99 ms", "short32", "p99_ms", "%.2f", false},
		{"c=32 CPU ms/1k", "short32", "cpu_ms_per_1000", "%.0f", false},
		{"c=256 /s", "short256", "per_s", "%.0f", true},
		{"c=256 p50 ms", "short256", "p50_ms", "%.1f", false},
		{"c=256 p99 ms", "short256", "p99_ms", "%.1f", false},
		{"c=256 CPU ms/1k", "short256", "cpu_ms_per_1000", "%.0f", false},
	}},
	{"Plain HTTP keep-alive through the proxy (wrk, absolute-form GET, 64 B body)", []column{
		{"requests/s", "http", "rps", "%.0f", true},
		{"p50 ms", "http", "p50_ms", "%.2f", false},
		{"p99 ms", "http", "p99_ms", "%.2f", false},
		{"proxy CPU µs/request", "http", "cpu_us_per_req", "%.0f", false},
		{"non-2xx + socket errors", "http", "errors", "%.0f", false},
	}},
	{"Memory per idle tunnel (concurrent CONNECT tunnels held open)", []column{
		{"tunnels asked", "idle", "tunnels", "%.0f", false},
		{"tunnels opened", "idle", "opened", "%.0f", false},
		{"RSS idle MiB", "idle", "rss_base_mib", "%.1f", false},
		{"RSS with tunnels MiB", "idle", "rss_mib", "%.1f", false},
		{"KiB per tunnel", "idle", "kib_per_tunnel", "%.1f", true},
		{"tunnels alive after", "idle", "alive", "%.0f", false},
	}},
}

func report(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: loadgen report RESULTS")
	}
	f, err := os.Open(args[0])
	if err != nil {
		return err
	}
	defer f.Close()
	type cell struct{ proxy, test, key string }
	vals := map[cell][]float64{}
	var proxies []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		kv := map[string]string{}
		for f := range strings.FieldsSeq(line) {
			if k, v, ok := strings.Cut(f, "="); ok {
				kv[k] = v
			}
		}
		p, t := kv["proxy"], kv["test"]
		if p == "" || t == "" {
			continue
		}
		if !slices.Contains(proxies, p) {
			proxies = append(proxies, p)
		}
		for k, v := range kv {
			if x, err := strconv.ParseFloat(v, 64); err == nil {
				vals[cell{p, t, k}] = append(vals[cell{p, t, k}], x)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	for _, tb := range tables {
		present := false
		for _, p := range proxies {
			if len(vals[cell{p, tb.cols[0].test, tb.cols[0].key}]) > 0 {
				present = true
			}
		}
		if !present {
			continue
		}
		fmt.Printf("\n%s\n\n| proxy |", tb.title)
		for _, c := range tb.cols {
			fmt.Printf(" %s |", c.head)
		}
		fmt.Print("\n|---|")
		for range tb.cols {
			fmt.Print("---:|")
		}
		fmt.Println()
		for _, p := range proxies {
			if len(vals[cell{p, tb.cols[0].test, tb.cols[0].key}]) == 0 {
				continue
			}
			n := len(vals[cell{p, tb.cols[0].test, tb.cols[0].key}])
			fmt.Printf("| %s (n=%d) |", p, n)
			for _, c := range tb.cols {
				v := vals[cell{p, c.test, c.key}]
				if len(v) == 0 || (c.key != "alive" && slices.Max(v) < 0) {
					fmt.Print(" — |")
					continue
				}
				s := fmt.Sprintf(c.format, median(v))
				if c.span && len(v) > 1 {
					s += fmt.Sprintf(" ("+c.format+"–"+c.format+")", slices.Min(v), slices.Max(v))
				}
				fmt.Printf(" %s |", s)
			}
			fmt.Println()
		}
	}
	return nil
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
