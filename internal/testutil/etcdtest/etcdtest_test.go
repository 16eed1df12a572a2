package etcdtest

import (
	"context"
	"testing"
	"time"
)

// TestQuorumSurvivesOneMember: a three-member cluster keeps serving with
// one member stopped, and the member rejoins with its data.
func TestQuorumSurvivesOneMember(t *testing.T) {
	c := Start(t, 3)
	cli := c.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "k", "v1"); err != nil {
		t.Fatalf("put: %v", err)
	}
	c.Stop(0)
	if _, err := cli.Put(ctx, "k", "v2"); err != nil {
		t.Fatalf("put with one member stopped: %v", err)
	}
	c.Restart(0)
	c.WaitReady(0)
	only := NewClient(t, c.Endpoint(0))
	// The restarted member catches up from the leader; a linearizable
	// read through it sees the write it missed.
	resp, err := only.Get(ctx, "k")
	if err != nil {
		t.Fatalf("get from the restarted member: %v", err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v2" {
		t.Fatalf("got %v, want k=v2", resp.Kvs)
	}
}
