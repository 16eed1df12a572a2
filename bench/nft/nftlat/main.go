// Command nftlat measures DNS latency with one query in flight, like
// bench/dns/dnslat, but for the nftables benchmark: it asks a chosen type
// (AAAA by default, because the bench upstream gives every name its own
// AAAA address but only 254 distinct A addresses) and can walk the names in
// file order, so that every timed query is for a name not asked before in
// the run and its answer carries an address the firewall has not
// programmed yet.
//
// It prints one line of percentiles and counts every RCODE that is not
// NOERROR by name (a SERVFAIL means fqdngate could not program the answer's
// addresses in time).
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	fs := flag.NewFlagSet("nftlat", flag.ContinueOnError)
	server := fs.String("s", "127.0.0.1:53", "server host:port")
	file := fs.String("d", "", "names, one a line (dnsperf format: a second field is ignored)")
	n := fs.Int("n", 10000, "queries to time")
	warm := fs.Int("w", 1000, "queries to send first, untimed")
	qtype := fs.String("type", "AAAA", "query type: A or AAAA")
	order := fs.String("order", "seq", "seq: the file's names in order, each once (wrapping if -w + -n exceeds them); random: drawn at random")
	timeout := fs.Duration("t", time.Second, "wait for each answer; a query that times out counts as lost")
	seed := fs.Uint64("seed", 1, "seed for -order random")
	dur := fs.Duration("for", 0, "time queries for this long after the warm-up instead of -n of them; also prints the worst one-second window")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	qt, ok := dns.StringToType[strings.ToUpper(*qtype)]
	if !ok || (qt != dns.TypeA && qt != dns.TypeAAAA) {
		fmt.Fprintf(os.Stderr, "nftlat: -type %q: want A or AAAA\n", *qtype)
		return 2
	}
	if *order != "seq" && *order != "random" {
		fmt.Fprintf(os.Stderr, "nftlat: -order %q: want seq or random\n", *order)
		return 2
	}
	names, err := readNames(*file)
	if err != nil {
		fmt.Fprintf(os.Stderr, "nftlat: %v\n", err)
		return 1
	}
	if *order == "seq" && *warm+*n > len(names) {
		fmt.Fprintf(os.Stderr, "nftlat: warning: %d queries over %d names: names repeat\n", *warm+*n, len(names))
	}
	conn, err := net.Dial("udp", *server)
	if err != nil {
		fmt.Fprintf(os.Stderr, "nftlat: %v\n", err)
		return 1
	}
	defer conn.Close()

	rng := rand.New(rand.NewPCG(*seed, 0))
	lat := make([]time.Duration, 0, *n)
	rcodes := map[int]int{}
	lost := 0
	buf := make([]byte, 65535)
	out := make([]byte, 0, 512)
	var (
		begin   time.Time
		seconds [][]time.Duration // -for: latencies by second since begin
	)
	total := *warm + *n
	if *dur > 0 {
		total = math.MaxInt
	}
	for i := range total {
		if *dur > 0 && i == *warm {
			begin = time.Now()
		}
		if *dur > 0 && i > *warm && time.Since(begin) >= *dur {
			break
		}
		name := names[i%len(names)]
		if *order == "random" {
			name = names[rng.IntN(len(names))]
		}
		var m dns.Msg
		m.SetQuestion(name, qt)
		m.Id = uint16(rng.Uint32())
		q, err := m.PackBuffer(out)
		if err != nil {
			fmt.Fprintf(os.Stderr, "nftlat: packing: %v\n", err)
			return 1
		}
		d, rcode, ok, err := exchange(conn, q, m.Id, buf, *timeout)
		if err != nil {
			fmt.Fprintf(os.Stderr, "nftlat: %v\n", err)
			return 1
		}
		if i < *warm {
			continue
		}
		switch {
		case !ok:
			lost++
		case rcode != dns.RcodeSuccess:
			rcodes[rcode]++
		default:
			lat = append(lat, d)
			if *dur > 0 {
				sec := int(time.Since(begin) / time.Second)
				for len(seconds) <= sec {
					seconds = append(seconds, nil)
				}
				seconds[sec] = append(seconds[sec], d)
			}
		}
	}
	if *dur > 0 {
		*n = len(lat) + lost
	}
	var bad []string
	for _, rc := range slices.Sorted(maps.Keys(rcodes)) {
		bad = append(bad, fmt.Sprintf("%s=%d", strings.ToLower(dns.RcodeToString[rc]), rcodes[rc]))
	}
	if len(lat) == 0 {
		fmt.Fprintf(os.Stderr, "nftlat: no NOERROR answers from %s (lost %d; %s)\n", *server, lost, strings.Join(bad, " "))
		return 1
	}
	slices.Sort(lat)
	var sum time.Duration
	for _, d := range lat {
		sum += d
	}
	us := func(d time.Duration) float64 { return float64(d) / 1e3 }
	fmt.Printf("n=%d lost=%d bad=%d mean_us=%.1f p50_us=%.1f p90_us=%.1f p99_us=%.1f p999_us=%.1f max_us=%.1f %s\n",
		len(lat), lost, *n-len(lat)-lost, us(sum/time.Duration(len(lat))), us(pct(lat, 50)), us(pct(lat, 90)),
		us(pct(lat, 99)), us(pct(lat, 99.9)), us(lat[len(lat)-1]), strings.Join(bad, " "))
	if len(seconds) > 0 {
		worst, at := time.Duration(0), 0
		for i, w := range seconds {
			if len(w) == 0 {
				continue
			}
			slices.Sort(w)
			if p := pct(w, 99); p > worst {
				worst, at = p, i
			}
		}
		fmt.Printf("worst_second=%d worst_second_p99_us=%.1f worst_second_max_us=%.1f worst_second_n=%d\n",
			at, us(worst), us(seconds[at][len(seconds[at])-1]), len(seconds[at]))
	}
	return 0
}

// exchange writes q and waits until timeout for the reply carrying id. ok
// is false on a timeout.
func exchange(conn net.Conn, q []byte, id uint16, buf []byte, timeout time.Duration) (d time.Duration, rcode int, ok bool, err error) {
	start := time.Now()
	if _, err := conn.Write(q); err != nil {
		return 0, 0, false, fmt.Errorf("sending: %w", err)
	}
	if err := conn.SetReadDeadline(start.Add(timeout)); err != nil {
		return 0, 0, false, err
	}
	for {
		n, err := conn.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return 0, 0, false, nil
			}
			return 0, 0, false, fmt.Errorf("receiving: %w", err)
		}
		// A late answer to an earlier, timed-out query: keep waiting.
		if n < 12 || uint16(buf[0])<<8|uint16(buf[1]) != id {
			continue
		}
		return time.Since(start), int(buf[3] & 0x0f), true, nil
	}
}

// pct is the nearest-rank percentile of sorted.
func pct(sorted []time.Duration, p float64) time.Duration {
	i := int(math.Ceil(float64(len(sorted))*p/100)) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func readNames(file string) ([]string, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("reading names: %w", err)
	}
	defer f.Close()
	var names []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		names = append(names, dns.Fqdn(fields[0]))
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading %s: %w", file, err)
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("%s holds no names", file)
	}
	return names, nil
}
