package resolver

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/policy"
)

// DNS-over-HTTPS (RFC 8484). net/http carries the queries: over HTTP/2,
// one connection multiplexes every query in flight, so a busy upstream
// costs one TLS handshake, not one per query; a server that offers only
// HTTP/1.1 in ALPN gets pooled HTTP/1.1 connections, one query at a time
// each. The Transport dials only the configured address and verifies the
// configured server name, whatever the URL says, and never goes through
// a proxy from the environment.

// dohContentType is the media type of a DNS message over HTTP.
const dohContentType = "application/dns-message"

// dohMaxHeaderBytes bounds a DoH response's header; answers need few.
const dohMaxHeaderBytes = 16 << 10

// HTTP/2 health checks: a connection silent this long is pinged, and
// closed if the ping is not answered in time, so a peer that vanished
// without closing is not kept in the pool, failing every query sent on it.
const (
	dohPingAfter   = 10 * time.Second
	dohPingTimeout = 5 * time.Second
)

// Errors from a DoH response that is not a DNS answer.
var (
	errDoHTooBig = errors.New("DoH response body larger than " + strconv.Itoa(dns.MaxMsgSize) + " bytes")
)

// dohClient asks one DNS-over-HTTPS upstream.
type dohClient struct {
	url string // https://server-name:port/path
	get bool   // GET ?dns=..., else POST
	tr  *http.Transport
}

// newDoHClient returns the client for uc, dialling uc.Addr with dialer and
// verifying the server with tc, whose ServerName (uc's, or its IP address)
// the URL names too.
func newDoHClient(uc policy.Upstream, dialer *net.Dialer, tc *tls.Config) (*dohClient, error) {
	u := "https://" + net.JoinHostPort(tc.ServerName, strconv.Itoa(int(uc.Addr.Port()))) + uc.Path
	if _, err := url.Parse(u); err != nil {
		return nil, fmt.Errorf("not a usable DoH URL: %w; write it like https://dns.example@192.0.2.53/dns-query", err)
	}
	addr := uc.Addr.String()
	tr := &http.Transport{
		// The URL's host is the server name, for the certificate and the
		// :authority; the address dialled is always the configured one.
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, "tcp", addr)
		},
		TLSClientConfig:        tc,
		ForceAttemptHTTP2:      true, // a custom DialContext turns HTTP/2 off otherwise
		MaxIdleConnsPerHost:    streamMaxIdle,
		IdleConnTimeout:        streamIdleTimeout,
		MaxResponseHeaderBytes: dohMaxHeaderBytes,
		DisableCompression:     true, // a DNS message is the body, byte for byte
		HTTP2: &http.HTTP2Config{
			SendPingTimeout: dohPingAfter,
			PingTimeout:     dohPingTimeout,
		},
	}
	return &dohClient{url: u, get: uc.GET, tr: tr}, nil
}

func (c *dohClient) close() { c.tr.CloseIdleConnections() }

// exchange sends the packed query wire, with ID 0 as RFC 8484 recommends
// (so identical queries are identical requests, which HTTP caches can
// share; HTTPS, not the ID, binds the answer to the query), and returns the
// answer, checked as every upstream's is. Exchange restores the client's
// ID. Any HTTP status but 200, another content type, a body that is not a
// DNS message answering q, or one over 65,535 bytes is an upstream failure.
func (c *dohClient) exchange(ctx context.Context, wire []byte, q dns.Question, deadline time.Time) (*dns.Msg, error) {
	setID(wire, 0)
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	m, err := c.roundTrip(ctx, wire, q)
	if err != nil && ctx.Err() != nil {
		// Report the deadline or cancellation as such (a net.Error timeout
		// for the deadline), however net/http wrapped it.
		return nil, ctx.Err()
	}
	return m, err
}

func (c *dohClient) roundTrip(ctx context.Context, wire []byte, q dns.Question) (*dns.Msg, error) {
	req, err := c.request(ctx, wire)
	if err != nil {
		return nil, err
	}
	resp, err := c.tr.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return readDoHResponse(resp, q)
}

// readDoHResponse returns the DNS answer to q, sent with ID 0, that resp
// carries, or why it carries none.
func readDoHResponse(resp *http.Response, q dns.Question) (*dns.Msg, error) {
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("DoH server answered HTTP status %d, want 200", resp.StatusCode)
	}
	if err := checkDoHContentType(resp.Header.Get("Content-Type")); err != nil {
		return nil, err
	}
	if resp.ContentLength > dns.MaxMsgSize {
		return nil, errDoHTooBig
	}
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf, err := readBody(resp.Body, *bp)
	if err != nil {
		return nil, err
	}
	m, err := parseResponse(buf, 0, q)
	if err != nil {
		return nil, err
	}
	ageTTLs(m, resp.Header.Get("Age"))
	return m, nil
}

// request returns the HTTP request carrying wire.
func (c *dohClient) request(ctx context.Context, wire []byte) (*http.Request, error) {
	var req *http.Request
	var err error
	if c.get {
		req, err = http.NewRequestWithContext(ctx, http.MethodGet, c.url+"?dns="+base64.RawURLEncoding.EncodeToString(wire), nil)
	} else {
		// A copy: net/http may still be sending the body after RoundTrip
		// returns (a server may answer before reading it all), while the
		// caller writes the next upstream's ID into wire.
		req, err = http.NewRequestWithContext(ctx, http.MethodPost, c.url, bytes.NewReader(slices.Clone(wire)))
	}
	if err != nil {
		return nil, fmt.Errorf("building DoH request: %w", err)
	}
	req.Header["Accept"] = []string{dohContentType}
	if !c.get {
		req.Header["Content-Type"] = []string{dohContentType}
		// DNS queries are idempotent: let net/http send a POST again on a
		// fresh connection when a pooled one turns out closed by the
		// server. An empty value is not sent.
		req.Header["Idempotency-Key"] = []string{}
	}
	// No User-Agent: it would only tell the server about us.
	req.Header["User-Agent"] = []string{""}
	return req, nil
}

// checkDoHContentType checks that a DoH response says it holds a DNS
// message.
func checkDoHContentType(ct string) error {
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil || mt != dohContentType {
		return fmt.Errorf("DoH response has content type %.64q, want %s", ct, dohContentType)
	}
	return nil
}

// readBody reads r into buf, which holds dns.MaxMsgSize bytes, and returns
// what it read; a body longer than buf is errDoHTooBig.
func readBody(r io.Reader, buf []byte) ([]byte, error) {
	n, err := io.ReadFull(r, buf)
	switch err {
	case io.EOF, io.ErrUnexpectedEOF:
		return buf[:n], nil
	case nil:
		var one [1]byte
		if _, err := io.ReadFull(r, one[:]); err != io.EOF {
			if err != nil {
				return nil, fmt.Errorf("reading DoH response: %w", err)
			}
			return nil, errDoHTooBig
		}
		return buf, nil
	default:
		return nil, fmt.Errorf("reading DoH response: %w", err)
	}
}

// ageTTLs takes the Age an HTTP cache on the way says it held the answer
// (RFC 8484 section 5.1, RFC 9111 section 5.1) from the answer's TTLs, so
// the DNS TTLs stay what the cache and the learned addresses live by; a
// TTL goes no lower than 0. An Age that is not a number of seconds is
// ignored, as RFC 9111 says. HTTP freshness (Cache-Control, Expires) plays
// no part: fqdngate caches by DNS TTL.
func ageTTLs(m *dns.Msg, age string) {
	if age == "" {
		return
	}
	a, err := strconv.ParseUint(age, 10, 32)
	if err != nil || a == 0 {
		return
	}
	for _, sec := range [][]dns.RR{m.Answer, m.Ns, m.Extra} {
		for _, rr := range sec {
			h := rr.Header()
			if h.Rrtype == dns.TypeOPT {
				continue // its TTL field holds flags
			}
			h.Ttl -= min(h.Ttl, uint32(a))
		}
	}
}
