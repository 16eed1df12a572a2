// Command dnslat measures DNS latency with one query in flight: it sends
// -n A queries over UDP to -s, one at a time, for names drawn at random
// from a dnsperf-format file, and prints latency percentiles (dnsperf
// reports only the mean).
//
// Each query is packed before the clock starts; the clock stops when the
// answer with the query's ID arrives, so the figure is the server's
// turnaround plus two loopback hops and the socket calls on this side.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
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
	fs := flag.NewFlagSet("dnslat", flag.ContinueOnError)
	server := fs.String("s", "127.0.0.1:53", "server host:port")
	file := fs.String("d", "", "query file, one \"name type\" a line (type is ignored: A is asked)")
	n := fs.Int("n", 20000, "queries to time")
	warm := fs.Int("w", 1000, "queries to send first, untimed")
	timeout := fs.Duration("t", time.Second, "wait for each answer; a query that times out counts as lost")
	seed := fs.Uint64("seed", 1, "seed for the choice of names")
	dur := fs.Duration("for", 0, "time queries for this long instead of -n of them")
	trace := fs.String("trace", "", "also write every timed query here, a line each: when it was sent (Unix ns) and its latency (ns; -1 lost, -2 not NOERROR)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	names, err := readNames(*file)
	if err != nil {
		fmt.Fprintf(os.Stderr, "dnslat: %v\n", err)
		return 1
	}
	conn, err := net.Dial("udp", *server)
	if err != nil {
		fmt.Fprintf(os.Stderr, "dnslat: %v\n", err)
		return 1
	}
	defer conn.Close()

	var tw *bufio.Writer
	if *trace != "" {
		f, err := os.Create(*trace)
		if err != nil {
			fmt.Fprintf(os.Stderr, "dnslat: %v\n", err)
			return 1
		}
		defer f.Close()
		tw = bufio.NewWriter(f)
		defer tw.Flush()
	}
	rng := rand.New(rand.NewPCG(*seed, 0))
	lat := make([]time.Duration, 0, *n)
	var until time.Time // with -for: when timing stops
	more := func(i int) bool {
		if *dur == 0 {
			return i < *warm+*n
		}
		if i == *warm {
			until = time.Now().Add(*dur)
		}
		return i < *warm || time.Now().Before(until)
	}
	var lost, bad int
	buf := make([]byte, 65535)
	out := make([]byte, 0, 512)
	for i := 0; more(i); i++ {
		var m dns.Msg
		m.SetQuestion(names[rng.IntN(len(names))], dns.TypeA)
		m.Id = uint16(rng.Uint32())
		q, err := m.PackBuffer(out)
		if err != nil {
			fmt.Fprintf(os.Stderr, "dnslat: packing: %v\n", err)
			return 1
		}
		start := time.Now()
		d, ok, err := exchange(conn, q, m.Id, buf, start.Add(*timeout))
		if err != nil {
			fmt.Fprintf(os.Stderr, "dnslat: %v\n", err)
			return 1
		}
		if i < *warm {
			continue
		}
		if tw != nil {
			t := d
			if !ok {
				t = -1
			} else if d < 0 {
				t = -2
			}
			fmt.Fprintf(tw, "%d %d\n", start.UnixNano(), t)
		}
		switch {
		case !ok:
			lost++
		case d < 0:
			bad++
		default:
			lat = append(lat, d)
		}
	}
	if len(lat) == 0 {
		fmt.Fprintf(os.Stderr, "dnslat: no answers from %s (%d lost)\n", *server, lost)
		return 1
	}
	slices.Sort(lat)
	var sum time.Duration
	for _, d := range lat {
		sum += d
	}
	us := func(d time.Duration) float64 { return float64(d) / 1e3 }
	fmt.Printf("n=%d lost=%d bad=%d mean_us=%.1f p50_us=%.1f p90_us=%.1f p99_us=%.1f p999_us=%.1f max_us=%.1f\n",
		len(lat), lost, bad, us(sum/time.Duration(len(lat))), us(pct(lat, 50)), us(pct(lat, 90)),
		us(pct(lat, 99)), us(pct(lat, 99.9)), us(lat[len(lat)-1]))
	return 0
}

// exchange writes q and waits for the reply carrying id. ok is false on a
// timeout; d is negative when the reply's RCODE is not NOERROR.
func exchange(conn net.Conn, q []byte, id uint16, buf []byte, deadline time.Time) (d time.Duration, ok bool, err error) {
	start := time.Now()
	if _, err := conn.Write(q); err != nil {
		return 0, false, fmt.Errorf("sending: %w", err)
	}
	if err := conn.SetReadDeadline(deadline); err != nil {
		return 0, false, err
	}
	for {
		n, err := conn.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return 0, false, nil
			}
			return 0, false, fmt.Errorf("receiving: %w", err)
		}
		// A late answer to an earlier, timed-out query: keep waiting.
		if n < 12 || uint16(buf[0])<<8|uint16(buf[1]) != id {
			continue
		}
		d = time.Since(start)
		if buf[3]&0x0f != dns.RcodeSuccess {
			d = -1
		}
		return d, true, nil
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
