// Command during splits dnslat's trace into the answers sent while a
// reload ran and the others, and prints each side's count, losses and
// latency percentiles, and their ratio: how much a reload slows the
// answers served meanwhile.
//
//	during -trace trace.txt -windows windows.txt
//
// windows.txt holds a line per reload: its start and end, Unix ns.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"math"
	"os"
	"slices"
)

func main() {
	trace := flag.String("trace", "", "dnslat -trace output")
	windows := flag.String("windows", "", "reload windows, a line each: start end (Unix ns)")
	flag.Parse()
	var ws [][2]int64
	if err := scan(*windows, func(a, b int64) { ws = append(ws, [2]int64{a, b}) }); err != nil {
		fmt.Fprintln(os.Stderr, "during:", err)
		os.Exit(1)
	}
	var in, out []float64
	var lostIn, lostOut int
	err := scan(*trace, func(sent, lat int64) {
		during := slices.ContainsFunc(ws, func(w [2]int64) bool { return sent >= w[0] && sent < w[1] })
		switch {
		case lat < 0 && during:
			lostIn++
		case lat < 0:
			lostOut++
		case during:
			in = append(in, float64(lat)/1e3)
		default:
			out = append(out, float64(lat)/1e3)
		}
	})
	if err != nil || len(in) == 0 || len(out) == 0 {
		fmt.Fprintf(os.Stderr, "during: %v (%d answers during reloads, %d outside)\n", err, len(in), len(out))
		os.Exit(1)
	}
	slices.Sort(in)
	slices.Sort(out)
	for _, s := range []struct {
		name string
		lat  []float64
		lost int
	}{{"outside", out, lostOut}, {"during", in, lostIn}} {
		fmt.Printf("%-8s n=%d lost=%d p50_us=%.1f p90_us=%.1f p99_us=%.1f max_us=%.1f\n", s.name, len(s.lat), s.lost, pct(s.lat, 50), pct(s.lat, 90), pct(s.lat, 99), s.lat[len(s.lat)-1])
	}
	fmt.Printf("during/outside p50=%.2f p90=%.2f p99=%.2f\n", pct(in, 50)/pct(out, 50), pct(in, 90)/pct(out, 90), pct(in, 99)/pct(out, 99))
}

// pct is the nearest-rank percentile of sorted.
func pct(sorted []float64, p float64) float64 {
	i := int(math.Ceil(float64(len(sorted))*p/100)) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func scan(file string, each func(a, b int64)) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var a, b int64
		if _, err := fmt.Sscan(sc.Text(), &a, &b); err != nil {
			return fmt.Errorf("%s: %q: %v", file, sc.Text(), err)
		}
		each(a, b)
	}
	return sc.Err()
}
