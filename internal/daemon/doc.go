// Package daemon wires fqdngate's components together and owns their
// lifecycle: load, start, reload, shut down.
//
// The data flow:
//
//	                     policy.yaml ──Load──▶ *policy.Policy (atomic swap on SIGHUP / file change)
//	                                                │ Decide()
//	client ──DNS──▶ dnsfw ──allowed──▶ resolver ──▶ upstreams
//	                  │ learned addresses (before the answer is released)
//	                  ▼
//	           learn.Publisher ──▶ nft backend (kernel sets with timeouts) | learn.Store (backend none)
//
//	client ──CONNECT / http://──▶ proxy ──Decide──▶ resolve via dnsfw ──▶ dial (deny private, verify TLS)
//	client ──redirected :443──▶ transparent proxy ──peek SNI/Host──▶ same path
//
//	kernel ──RTM_NEWADDR/DELADDR──▶ localaddr.Set (this host's addresses): stripped from answers by
//	                                 dnsfw, never dialled by the proxy (netaddr.Local); as clients,
//	                                 this host, served like loopback (policy.InsideConn)
//	nft table's drop counters ──read at scrape──▶ fqdngate_firewall_{reverse_path,outside}_drops_total
//
//	kubernetes section, internal/kube:
//	pods, namespaces ──informers──▶ kube.Watcher ──snapshot (policy.Members)──▶ nft pod sets (one element diff), then
//	                                                                           the policy in force (groups that select pods)
//
//	every decision ──▶ audit.Logger (one line, naming the pod of a pod source) + metrics + the allowing rule's hit
//	                   (policy.Usage, /v1/rules; kept across reloads by KeepUsage); admin serves health, metrics, /v1/*
//
//	observe_until: Decide reads the policy's clock (a group's denials are would-deny until its date);
//	the group's kernel accept carries the deadline (meta time <), so the kernel enforces on its own at it;
//	Run's observeTimer applies the kernel ruleset again at each deadline to remove the expired rule
//
//	fleet gateway (cluster: in the local file), internal/cluster:
//	etcd policy/current ──watch──▶ revision ──compose with the local file──▶ *policy.Policy ──▶ the reload's prepare/commit
//	status/<node> (lease) ◀── announcer: revision in force, refused revision and why, learned count
//
// Only this package knows every component; each component depends on small
// interfaces it defines itself.
//
// Start and reload take the same path: prepare builds everything that can
// fail (resolver, audit file, listener sockets) without touching what is in
// force; commit runs the kernel transaction, which applies whole or not at
// all, and then swaps what cannot fail (resolver, audit file, policy
// pointer, listeners); a failure before the swap closes what was prepared.
// restart.go lists the settings that only take effect at start.
package daemon
