package policy

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"regexp"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Cluster is the cluster section of a gateway's local file: how the
// gateway reaches the fleet's etcd, what it is called there, and how long a
// DNS answer waits for the other gateways. A policy without it (nil) is a
// standalone gateway that never talks to etcd.
type Cluster struct {
	// Endpoints are etcd's client URLs: https://host:port, or
	// http://host:port on loopback only.
	Endpoints []string
	// CAFile verifies etcd's certificate (empty: the system roots);
	// CertFile and KeyFile are this gateway's client certificate.
	CAFile, CertFile, KeyFile string
	// Username and PasswordFile authenticate to etcd; the file is read
	// when dialling, never logged.
	Username, PasswordFile string
	// Prefix is the fleet's key space in etcd; it starts and ends with /.
	Prefix string
	// Node names this gateway in the fleet (default: the host name).
	Node string
	// Hold is how long a DNS answer waits: until every live gateway
	// enforces its addresses (peers), or only this one (local).
	Hold Hold
	// HoldTimeout bounds a peers hold; OnHoldTimeout says what happens
	// when it passes.
	HoldTimeout   time.Duration
	OnHoldTimeout OnHoldTimeout
	// HistoryKeep is how many shared policy revisions a push from this
	// gateway's file keeps in etcd, the new one included; older ones are
	// deleted as it stores the new one.
	HistoryKeep int
	// At is where the local file's cluster key is, for problems found
	// after loading (a certificate that does not load).
	At Pos
}

// Hold is when a DNS answer is released in a fleet.
type Hold uint8

const (
	HoldPeers Hold = iota // every live gateway enforces the addresses
	HoldLocal             // this gateway does; the others follow asynchronously
)

func (h Hold) String() string { return [...]string{"peers", "local"}[h] }

// OnHoldTimeout is what a peers hold does when hold_timeout passes.
type OnHoldTimeout uint8

const (
	TimeoutRelease  OnHoldTimeout = iota // release the answer, counted and audited
	TimeoutServFail                      // answer SERVFAIL; the client retries
)

func (o OnHoldTimeout) String() string { return [...]string{"release", "servfail"}[o] }

// DefaultPrefix is cluster.prefix when the file does not set it.
const DefaultPrefix = "/fqdngate/"

// DefaultHistoryKeep is cluster.history_keep when the file does not set
// it: months of pushes at a few a day, a few MiB of etcd at most.
const DefaultHistoryKeep = 100

// maxHoldTimeout keeps a hold below what stub resolvers wait for an
// answer before they retry (5s for glibc).
const maxHoldTimeout = 5 * time.Second

// hostname is os.Hostname, replaced by tests.
var hostname = os.Hostname

var (
	validPrefix = regexp.MustCompile(`^/([A-Za-z0-9_.-]+/)*$`)
	validNode   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)
)

// Which half of a fleet gateway's policy each top-level key belongs to.
// The local file holds what differs from gateway to gateway (where it
// listens, its kernel table and state file, its log, how it reaches etcd);
// etcd holds what every gateway must agree on, so that an answer one
// gateway gives is allowed the same way on all of them.
var (
	localKeys  = []string{"listen", "admin", "firewall", "log", "history", "cluster", "kubernetes"}
	sharedKeys = []string{"mode", "dns", "proxy", "sources", "inside", "users", "rules"}
)

// IsLocalKey reports whether a top-level key belongs in each gateway's local
// file rather than in the shared policy.
func IsLocalKey(key string) bool {
	for _, k := range localKeys {
		if k == key {
			return true
		}
	}
	return false
}

func isSharedKey(key string) bool {
	for _, k := range sharedKeys {
		if k == key {
			return true
		}
	}
	return false
}

// ParseCluster decodes the cluster section of the local file in data, for
// what must happen before the shared half can be read (dialling etcd). It
// returns nil and no error for a file without one. Only the cluster
// section is checked; Compose checks the whole.
func ParseCluster(file string, data []byte) (*Cluster, error) {
	d := &decoder{file: file}
	// Read as a reload reads it: with fastyaml the rules are not read at
	// all here (a whole tree of them was a third of a large policy's
	// start).
	top, err := d.document(Source{Name: file, Data: data}, true)
	if err != nil {
		return nil, ErrorList{err}
	}
	if top == nil || top.Kind != yaml.MappingNode {
		return nil, nil
	}
	for i := 0; i+1 < len(top.Content); i += 2 {
		if top.Content[i].Value != "cluster" {
			continue
		}
		c := d.cluster(top.Content[i], top.Content[i+1])
		if errs := d.result(); errs != nil {
			return nil, errs
		}
		return c, nil
	}
	return nil, nil
}

// cluster decodes and validates the cluster section whose key is k.
func (d *decoder) cluster(k, n *yaml.Node) *Cluster {
	c := &Cluster{Prefix: DefaultPrefix, HoldTimeout: 250 * time.Millisecond, HistoryKeep: DefaultHistoryKeep, At: Pos{k.Line, k.Column}}
	var (
		endpoints                     []positioned
		epSet                         bool
		epNode, etcdNode, tlsNode     *yaml.Node
		userNode, pwNode, prefixNode  *yaml.Node
		nodeNode, holdNode, onTOsNode *yaml.Node
		htNode                        *yaml.Node
		hold, onTimeout               string
	)
	d.mapping(n, "cluster",
		field{"etcd", func(n *yaml.Node) {
			etcdNode = d.deref(n)
			d.mapping(n, "cluster.etcd",
				field{"endpoints", func(n *yaml.Node) {
					epNode = d.deref(n)
					d.positionedList(&endpoints, &epSet, "cluster.etcd.endpoints")(n)
				}},
				field{"tls", func(n *yaml.Node) {
					tlsNode = d.deref(n)
					d.mapping(n, "cluster.etcd.tls",
						field{"ca_file", d.str(&c.CAFile, "cluster.etcd.tls.ca_file")},
						field{"cert_file", d.str(&c.CertFile, "cluster.etcd.tls.cert_file")},
						field{"key_file", d.str(&c.KeyFile, "cluster.etcd.tls.key_file")},
					)
				}},
				field{"username", func(n *yaml.Node) { userNode = d.deref(n); d.str(&c.Username, "cluster.etcd.username")(n) }},
				field{"password_file", func(n *yaml.Node) { pwNode = d.deref(n); d.str(&c.PasswordFile, "cluster.etcd.password_file")(n) }},
			)
		}},
		field{"prefix", func(n *yaml.Node) { prefixNode = d.deref(n); d.str(&c.Prefix, "cluster.prefix")(n) }},
		field{"node", func(n *yaml.Node) { nodeNode = d.deref(n); d.str(&c.Node, "cluster.node")(n) }},
		field{"hold", func(n *yaml.Node) { holdNode = d.deref(n); d.str(&hold, "cluster.hold")(n) }},
		field{"hold_timeout", func(n *yaml.Node) { htNode = d.deref(n); d.duration(&c.HoldTimeout, "cluster.hold_timeout")(n) }},
		field{"on_hold_timeout", func(n *yaml.Node) { onTOsNode = d.deref(n); d.str(&onTimeout, "cluster.on_hold_timeout")(n) }},
		// At least 2: the revision in force and one to roll back to.
		field{"history_keep", d.integer(&c.HistoryKeep, "cluster.history_keep", 2, 100_000)},
	)
	if n = d.deref(n); n.Kind != yaml.MappingNode {
		if isNull(n) {
			d.errorf(k, "cluster is empty; give at least cluster.etcd.endpoints, like cluster: {etcd: {endpoints: [\"https://192.0.2.11:2379\"]}}")
		}
		return c
	}
	if etcdNode == nil || !epSet {
		at := etcdNode
		if at == nil {
			at = k
		}
		d.errorf(at, "cluster needs etcd.endpoints, the client URLs of the fleet's etcd, like etcd: {endpoints: [\"https://192.0.2.11:2379\"]}")
	} else if len(endpoints) == 0 {
		d.errorf(epNode, "cluster.etcd.endpoints is empty; list etcd's client URLs, like [\"https://192.0.2.11:2379\"]")
	}
	schemes := map[string]bool{}
	for _, e := range endpoints {
		u, err := d.endpoint(e)
		if err != nil {
			d.errorf(e.n, "cluster.etcd.endpoints: %v", err)
			continue
		}
		schemes[u.Scheme] = true
		c.Endpoints = append(c.Endpoints, u.String())
	}
	if len(schemes) > 1 {
		d.errorf(epNode, "cluster.etcd.endpoints mixes http:// and https://; one etcd cluster speaks one of them, and fqdngate wants https://")
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		d.errorf(tlsNode, "cluster.etcd.tls needs both cert_file and key_file (this gateway's client certificate and its key), or neither")
	}
	if schemes["https"] && c.CertFile == "" && c.KeyFile == "" {
		at := tlsNode
		if at == nil {
			at = epNode
		}
		d.errorf(at, "cluster.etcd.tls needs cert_file and key_file: etcd holds what every gateway lets through, so it must only be reachable with client certificates (etcd --client-cert-auth)")
	}
	if schemes["http"] && tlsNode != nil {
		d.errorf(tlsNode, "cluster.etcd.tls is set but the endpoints are http://; write them as https://")
	}
	for _, f := range []struct {
		key, path string
	}{{"ca_file", c.CAFile}, {"cert_file", c.CertFile}, {"key_file", c.KeyFile}, {"password_file", c.PasswordFile}} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			at := tlsNode
			key := "cluster.etcd.tls." + f.key
			if f.key == "password_file" {
				at, key = pwNode, "cluster.etcd.password_file"
			}
			d.errorf(at, "%s: %v", key, err)
		}
	}
	if (c.Username == "") != (c.PasswordFile == "") {
		at := userNode
		if at == nil {
			at = pwNode
		}
		d.errorf(at, "cluster.etcd needs both username and password_file (a file holding only the password), or neither")
	}
	if !validPrefix.MatchString(c.Prefix) || len(c.Prefix) > 128 {
		d.errorf(prefixNode, "cluster.prefix %q must start and end with '/' and hold path segments of letters, digits, '_', '.' or '-', like /fqdngate/ or /fqdngate/prod/", c.Prefix)
	}
	if nodeNode == nil {
		h, err := hostname()
		switch {
		case err != nil:
			d.errorf(k, "cluster.node is not set and the host name cannot be read (%v); set cluster.node, like node: gw-a", err)
		case !validNode.MatchString(h):
			d.errorf(k, "cluster.node is not set and the host name %q is not a valid node name; set cluster.node to 1 to 63 letters, digits, '_', '.' or '-', like node: gw-a", h)
		default:
			c.Node = h
		}
	} else if !validNode.MatchString(c.Node) {
		d.errorf(nodeNode, "cluster.node %q must be 1 to 63 letters, digits, '_', '.' or '-', starting with a letter or digit, like gw-a", c.Node)
	}
	switch hold {
	case "", "peers":
	case "local":
		c.Hold = HoldLocal
	default:
		d.errorf(holdNode, "cluster.hold must be peers (an answer waits until every live gateway enforces it) or local (only this one), not %q", hold)
	}
	if htNode != nil && (c.HoldTimeout <= 0 || c.HoldTimeout > maxHoldTimeout) {
		d.errorf(htNode, "cluster.hold_timeout must be longer than 0s and at most %v (clients retry after about 5s); the default is 250ms", maxHoldTimeout)
	}
	switch onTimeout {
	case "", "release":
	case "servfail":
		c.OnHoldTimeout = TimeoutServFail
	default:
		d.errorf(onTOsNode, "cluster.on_hold_timeout must be release (answer anyway, counted and audited) or servfail, not %q", onTimeout)
	}
	return c
}

// endpoint parses one etcd client URL. Plain http is accepted on loopback
// only: etcd is part of what decides what gateways let through.
func (d *decoder) endpoint(e positioned) (*url.URL, error) {
	u, err := url.Parse(e.v)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return nil, fmt.Errorf("%q is not an etcd client URL; write it like https://192.0.2.11:2379", e.v)
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil || u.Fragment != "" {
		return nil, fmt.Errorf("%q: an etcd endpoint is scheme://host:port only; write it like https://192.0.2.11:2379", e.v)
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil || port == "" {
		return nil, fmt.Errorf("%q has no port; etcd's client port is usually 2379, like https://%s:2379", e.v, strings.Trim(u.Host, "[]"))
	}
	if u.Scheme == "http" {
		a, err := netip.ParseAddr(host)
		if host != "localhost" && (err != nil || !a.IsLoopback()) {
			return nil, fmt.Errorf("%q is plain http to another host: etcd holds what every gateway lets through, so reach it with https:// and client certificates (plain http is for loopback only)", e.v)
		}
	}
	return &url.URL{Scheme: u.Scheme, Host: u.Host}, nil
}
