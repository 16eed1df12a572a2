package history

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"

	"github.com/fqdngate/fqdngate/internal/audit"
	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/testutil/netns"
)

// A child process of this test binary, started with one of these set,
// plays a part instead of running the tests.
const (
	envFullDisk = "FQDNGATE_HISTORY_TEST_FULL_DISK"
	envWriter   = "FQDNGATE_HISTORY_TEST_WRITER"
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(envFullDisk); dir != "" {
		os.Exit(fullDiskChild(dir))
	}
	if spec := os.Getenv(envWriter); spec != "" {
		os.Exit(writerChild(spec))
	}
	os.Exit(m.Run())
}

// TestFullDisk writes the history on a 1 MiB tmpfs that the child mounts
// in its own mount namespace: a full disk is logged and counted, every
// decision is still taken, and writing resumes once there is room.
func TestFullDisk(t *testing.T) {
	netns.RequireRoot(t)
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("needs unshare(1) from util-linux")
	}
	dir := t.TempDir()
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envFullDisk+"="+dir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	t.Logf("child:\n%s", out)
	// The tmpfs was the child's alone: nothing is mounted here.
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("the child's tmpfs leaked into this namespace: %v", entries)
	}
}

func fullDiskChild(dir string) int {
	fail := func(format string, args ...any) int {
		fmt.Printf("FAIL: "+format+"\n", args...)
		return 1
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		return fail("mounting tmpfs: %v", err)
	}
	st, _, err := Open(filepath.Join(dir, "history.db"), Options{Now: func() time.Time { return day1 }})
	if err != nil {
		return fail("open: %v", err)
	}
	defer st.Close()
	r, err := NewRecorder(RecorderConfig{Store: st})
	if err != nil {
		return fail("recorder: %v", err)
	}
	// Leave little room.
	filler := filepath.Join(dir, "filler")
	f, err := os.Create(filler)
	if err != nil {
		return fail("filler: %v", err)
	}
	buf := make([]byte, 64<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			break
		}
	}
	f.Close()
	observed := 0
	for batch := 0; batch < 50 && testutil.ToFloat64(r.m.errors.WithLabelValues("disk_full")) == 0; batch++ {
		for i := range 500 {
			r.Observe(dnsEvent(day1, src1, fmt.Sprintf("n%d-%d.example.com", batch, i), policy.Deny, "203.0.113.1"))
			observed++
		}
		drain(r)
		r.flush(context.Background())
	}
	full := testutil.ToFloat64(r.m.errors.WithLabelValues("disk_full"))
	dropped := testutil.ToFloat64(r.m.dropped.WithLabelValues("disk_full"))
	fmt.Printf("observed %d decisions, disk_full errors %v, rows dropped %v\n", observed, full, dropped)
	if full == 0 || dropped == 0 {
		return fail("a full disk was not counted")
	}
	if len(r.rows) != 0 {
		return fail("rows kept after a full disk: %d", len(r.rows))
	}
	// Room again: writing resumes.
	os.Remove(filler)
	r.Observe(dnsEvent(day1, src1, "after.example.com", policy.Deny, ""))
	drain(r)
	r.flush(context.Background())
	rows, err := st.Query(context.Background(), Filter{Name: "after.example.com"})
	if err != nil || len(rows) != 1 {
		return fail("after freeing space: %v, %v", rows, err)
	}
	fmt.Println("writing resumed")
	return 0
}

func drain(r *Recorder) {
	for len(r.ch) > 0 {
		s := <-r.ch
		r.add(&s)
	}
}

// TestConcurrentWriters has two processes write the same rows into one
// file at once: SQLite's locking makes one wait for the other, and no
// hit is lost.
func TestConcurrentWriters(t *testing.T) {
	path := filepath.Join(t.TempDir(), "history.db")
	const flushes, perFlush = 10, 100
	var cmds []*exec.Cmd
	for i := range 2 {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s,%d,%d,%d", envWriter, path, i, flushes, perFlush))
		var out strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if out.Len() > 0 {
				t.Logf("writer %d: %s", i, out.String())
			}
		})
		cmds = append(cmds, cmd)
	}
	for i, c := range cmds {
		if err := c.Wait(); err != nil {
			t.Fatalf("writer %d: %v", i, err)
		}
	}
	st, _, err := Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var check string
	if err := st.db.QueryRow("PRAGMA integrity_check").Scan(&check); err != nil || check != "ok" {
		t.Fatalf("integrity_check: %q, %v", check, err)
	}
	var hits, rows int64
	if err := st.db.QueryRow("SELECT sum(hits), count(*) FROM decisions").Scan(&hits, &rows); err != nil {
		t.Fatal(err)
	}
	if want := int64(2 * flushes * perFlush); hits != want {
		t.Errorf("got %d hits, want %d", hits, want)
	}
	if rows != perFlush {
		t.Errorf("got %d rows, want %d (both processes add to the same rows)", rows, perFlush)
	}
}

func writerChild(spec string) int {
	parts := strings.Split(spec, ",")
	flushes, _ := strconv.Atoi(parts[2])
	per, _ := strconv.Atoi(parts[3])
	st, _, err := Open(parts[0], Options{Now: func() time.Time { return day1 }, BusyTimeout: time.Minute})
	if err != nil {
		fmt.Println(err)
		return 1
	}
	defer st.Close()
	r, err := NewRecorder(RecorderConfig{Store: st})
	if err != nil {
		fmt.Println(err)
		return 1
	}
	for range flushes {
		for i := range per {
			r.Observe(dnsEvent(day1, src1, fmt.Sprintf("n%d.example.com", i), policy.Deny, ""))
		}
		drain(r)
		if err := st.write(context.Background(), r.rows); err != nil {
			fmt.Println("write:", err)
			return 1
		}
		clear(r.rows)
	}
	return 0
}

// TestHandOffNeverBlocks holds the database locked from another
// connection, as a second process would: the writer waits on the lock,
// decisions keep being handed over without waiting, the ones that do not
// fit are counted as dropped, and writing resumes when the lock goes.
func TestHandOffNeverBlocks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "history.db")
	st, _, err := Open(path, Options{BusyTimeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	locker, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer locker.Close()
	conn, err := locker.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(context.Background(), "BEGIN EXCLUSIVE"); err != nil {
		t.Fatal(err)
	}
	r, err := NewRecorder(RecorderConfig{Store: st, Buffer: 64, MaxRows: 100, FlushRows: 10, FlushEvery: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	logger := audit.New(nil, "json", nil)
	logger.SetSink(r)
	const n = 20000
	for i := range n {
		logger.Record(context.Background(), dnsEvent(time.Time{}, src1, fmt.Sprintf("n%d.example.com", i), policy.Deny, ""))
	}
	dropped := testutil.ToFloat64(r.m.dropped.WithLabelValues("buffer_full")) + testutil.ToFloat64(r.m.dropped.WithLabelValues("rows_full"))
	if dropped == 0 {
		t.Fatalf("%d decisions went through a locked history without one dropped", n)
	}
	t.Logf("%v of %d dropped while the file was locked", dropped, n)
	// The writer tried and failed while the lock stood.
	for deadline := time.Now().Add(30 * time.Second); testutil.ToFloat64(r.m.errors.WithLabelValues("other")) == 0; {
		if time.Now().After(deadline) {
			t.Fatal("no write failed on the locked file")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := conn.ExecContext(context.Background(), "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	// Written once the lock is gone.
	for deadline := time.Now().Add(30 * time.Second); ; {
		rows, err := st.Query(context.Background(), Filter{})
		if err == nil && len(rows) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing written after the lock went: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
