package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Node states in a Report.
const (
	StateOK       = "ok"       // on the current revision, status fresh
	StateLagging  = "lagging"  // on an older revision, and has not refused the current one
	StateRejected = "rejected" // refused a newer revision; stays on its own
	StateGone     = "gone"     // was a member; its status key expired
)

// Report is the fleet as etcd shows it: one entry per gateway that ever
// joined, in node order.
type Report struct {
	// CurrentRevision is the shared revision in force; 0 if none was
	// pushed.
	CurrentRevision int64        `json:"current_revision"`
	Nodes           []NodeReport `json:"nodes"`
	// Read is when etcd was read.
	Read time.Time `json:"read"`
}

// NodeReport is one gateway in a Report.
type NodeReport struct {
	Status
	State string `json:"state"`
	// Lag is how many revisions the node is behind the current one.
	Lag int64 `json:"lag"`
	// LastSeenAgo is how long before Read the node last wrote its status
	// (for a gone node, when it registered, if nothing better is known).
	LastSeenAgo string `json:"last_seen_ago"`
}

// Healthy reports whether every gateway is on the current revision and
// alive.
func (r Report) Healthy() bool {
	for _, n := range r.Nodes {
		if n.State != StateOK {
			return false
		}
	}
	return true
}

// ReadFleet reads the fleet's report from etcd, at one etcd revision.
func ReadFleet(ctx context.Context, cli *clientv3.Client, prefix string) (Report, error) {
	k := Keys{prefix}
	resp, err := cli.Txn(ctx).Then(
		clientv3.OpGet(k.current()),
		clientv3.OpGet(k.statuses(), clientv3.WithPrefix()),
		clientv3.OpGet(k.members(), clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return Report{}, unreachable("reading the fleet's status", err)
	}
	rep := Report{Read: time.Now().UTC(), Nodes: []NodeReport{}}
	cur, statuses, members := resp.Responses[0].GetResponseRange(), resp.Responses[1].GetResponseRange(), resp.Responses[2].GetResponseRange()
	if len(cur.Kvs) > 0 {
		if rep.CurrentRevision, err = parseNumber(cur.Kvs[0].Value); err != nil {
			return Report{}, err
		}
	}
	byNode := map[string]*NodeReport{}
	for _, kv := range statuses.Kvs {
		node := strings.TrimPrefix(string(kv.Key), k.statuses())
		nr := &NodeReport{}
		if err := json.Unmarshal(kv.Value, &nr.Status); err != nil {
			nr.Status = Status{LastError: fmt.Sprintf("status unreadable: %v", err)}
		}
		nr.Node = node
		nr.Lag = max(rep.CurrentRevision-nr.PolicyRevision, 0)
		switch {
		case nr.Lag == 0:
			nr.State = StateOK
		case nr.RejectedRevision > nr.PolicyRevision:
			nr.State = StateRejected
		default:
			nr.State = StateLagging
		}
		if !nr.Updated.IsZero() {
			nr.LastSeenAgo = rep.Read.Sub(nr.Updated).Round(time.Second).String()
		}
		byNode[node] = nr
	}
	for _, kv := range members.Kvs {
		node := strings.TrimPrefix(string(kv.Key), k.members())
		if _, live := byNode[node]; live {
			continue
		}
		var m member
		_ = json.Unmarshal(kv.Value, &m)
		nr := &NodeReport{State: StateGone, Status: Status{Node: node, Started: m.Started}}
		if !m.Started.IsZero() {
			nr.LastSeenAgo = "over " + rep.Read.Sub(m.Started).Round(time.Second).String()
		}
		byNode[node] = nr
	}
	for _, nr := range byNode {
		rep.Nodes = append(rep.Nodes, *nr)
	}
	sort.Slice(rep.Nodes, func(i, j int) bool { return rep.Nodes[i].Node < rep.Nodes[j].Node })
	return rep, nil
}

// WriteText writes the report as fleet status prints it: a header, then
// one line per gateway.
func (r Report) WriteText(w io.Writer) error {
	cur := "none pushed"
	if r.CurrentRevision > 0 {
		cur = fmt.Sprint(r.CurrentRevision)
	}
	if _, err := fmt.Fprintf(w, "shared policy revision: %s\n", cur); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tSTATE\tREVISION\tLAG\tLAST SEEN\tLEARNED\tERRORS")
	for _, n := range r.Nodes {
		rev, seen, learned, errs := "-", "-", "-", "-"
		if n.State != StateGone {
			rev, learned = fmt.Sprint(n.PolicyRevision), fmt.Sprint(n.Learned)
		}
		if n.LastSeenAgo != "" {
			seen = n.LastSeenAgo + " ago"
		}
		if n.LastError != "" {
			errs = n.LastError
			if n.RejectedRevision > 0 {
				errs = fmt.Sprintf("revision %d refused: %s", n.RejectedRevision, n.LastError)
			}
			errs = strings.ReplaceAll(errs, "\n", "; ")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\n", n.Node, n.State, rev, n.Lag, seen, learned, errs)
	}
	return tw.Flush()
}

// Forget removes a gone node from the fleet's members, so that fleet
// status stops reporting it. A live node (its status key exists) is not
// forgotten.
func Forget(ctx context.Context, cli *clientv3.Client, prefix, node string) error {
	k := Keys{prefix}
	resp, err := cli.Txn(ctx).If(
		clientv3.Compare(clientv3.CreateRevision(k.status(node)), "=", 0),
	).Then(
		clientv3.OpDelete(k.member(node)),
	).Commit()
	if err != nil {
		return unreachable("forgetting "+node, err)
	}
	if !resp.Succeeded {
		return errors.New(node + " is alive (its status key exists); stop it first, and forget it once fleet status says it is gone")
	}
	if resp.Responses[0].GetResponseDeleteRange().Deleted == 0 {
		return fmt.Errorf("no node %q in the fleet; fleet status lists them", node)
	}
	return nil
}
