package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/fqdngate/fqdngate/internal/admin"
	"github.com/fqdngate/fqdngate/internal/learn"
)

// learnedFlags are firewall show's flags for listing learned addresses.
type learnedFlags struct {
	learned                 bool
	admin                   string
	name, rule, group, addr string
	page                    int
}

func (l *learnedFlags) register(fs *flag.FlagSet) {
	fs.BoolVar(&l.learned, "learned", false, "list the learned addresses of the running daemon")
	fs.StringVar(&l.admin, "admin", "", "the daemon's admin listener `URL` (default: listen.admin of POLICY)")
	fs.StringVar(&l.name, "name", "", "only addresses learned for `NAME`")
	fs.StringVar(&l.rule, "rule", "", "only addresses of rule `RULE`")
	fs.StringVar(&l.group, "group", "", "only addresses open to source group `GROUP`")
	fs.StringVar(&l.addr, "addr", "", "only `ADDRESS`, or the addresses in a prefix")
	fs.IntVar(&l.page, "page", admin.DefaultLearnedPage, "ask for `N` addresses at a time (1 to 10000)")
}

// wanted reports whether the flags ask for the learned addresses.
func (l *learnedFlags) wanted() bool {
	return l.learned || l.admin != "" || l.name != "" || l.rule != "" || l.group != "" || l.addr != ""
}

// showLearned pages through /v1/learned, printing each page as it comes.
func showLearned(ctx context.Context, l learnedFlags, cfg string, stdout, stderr io.Writer) int {
	fail := func(err error) int {
		fmt.Fprintf(stderr, "fqdngate firewall show: %v\n", err)
		return 1
	}
	if l.page < 1 || l.page > learn.MaxPage {
		fmt.Fprintf(stderr, "fqdngate firewall show: --page %d: give a number from 1 to %d\n", l.page, learn.MaxPage)
		return 2
	}
	if l.addr != "" {
		// Refuse here what the daemon would, with the flag's name.
		if _, err := learn.ParseAddrFilter(l.addr); err != nil {
			fmt.Fprintf(stderr, "fqdngate firewall show: --addr: %v\n", err)
			return 2
		}
	}
	base := l.admin
	if base == "" {
		if cfg == "" {
			fmt.Fprintln(stderr, "fqdngate firewall show: the learned addresses come from the running daemon: give --admin http://127.0.0.1:15380 or -c POLICY (its listen.admin)")
			return 2
		}
		p, err := loadLocal(cfg)
		if err != nil {
			return fail(err)
		}
		if p.Listen.Admin == "" {
			return fail(fmt.Errorf("%s has no listen.admin, so the daemon serves no learned addresses; give --admin URL", cfg))
		}
		base = "http://" + p.Listen.Admin
	}
	u, err := url.Parse(strings.TrimSuffix(base, "/") + "/v1/learned")
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		fmt.Fprintf(stderr, "fqdngate firewall show: --admin %q is not a URL like http://127.0.0.1:15380\n", base)
		return 2
	}
	q := url.Values{}
	for k, v := range map[string]string{"name": l.name, "rule": l.rule, "group": l.group, "addr": l.addr} {
		if v != "" {
			q.Set(k, v)
		}
	}
	q.Set("limit", strconv.Itoa(l.page))
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ADDRESS\tRULE\tGROUP\tNAME\tEXPIRES IN")
	n := 0
	for {
		u.RawQuery = q.Encode()
		page, err := fetchLearned(ctx, u)
		if err != nil {
			tw.Flush()
			return fail(err)
		}
		for _, e := range page.Learned {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.Address, e.Rule, dash(e.Group), dash(e.Name), e.ExpiresIn)
		}
		n += len(page.Learned)
		// A page's columns line up; the next page's may be wider.
		tw.Flush()
		if page.Next == "" {
			break
		}
		q.Set("after", page.Next)
	}
	fmt.Fprintf(stdout, "%d learned addresses\n", n)
	return 0
}

func fetchLearned(ctx context.Context, u *url.URL) (admin.LearnedPage, error) {
	var page admin.LearnedPage
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return page, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return page, fmt.Errorf("asking the daemon: %w; is it running, with its admin listener at %s?", err, u.Host)
	}
	defer resp.Body.Close()
	var body struct {
		admin.LearnedPage
		Error string `json:"error"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&body); err != nil {
		return page, fmt.Errorf("reading %s: %s: %w", u.Redacted(), resp.Status, err)
	}
	if resp.StatusCode != http.StatusOK {
		return page, fmt.Errorf("%s: %s", resp.Status, body.Error)
	}
	return body.LearnedPage, nil
}
