package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/amgateway/amg/internal/redistest"
	"github.com/amgateway/amg/internal/syncbuf"
)

// appendRecords writes n records to the audit file at path through a file
// device that rotates every few records, agents alternating bot-0, bot-1,
// bot-2 and decision ids numbered from first.
func appendRecords(t *testing.T, path string, first, n int) {
	t.Helper()
	d, err := NewFileDevice(path, &FileOptions{MaxBytes: 4096})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for i := first; i < first+n; i++ {
		if err := d.Write(streamRecord(i)); err != nil {
			t.Fatal(err)
		}
	}
}

// streamRecord is the record appendRecords writes i-th.
func streamRecord(i int) *Record {
	return &Record{Time: time.Date(2026, 11, 26, 9, 0, i, 0, time.UTC), DecisionID: fmt.Sprintf("dec-%03d", i),
		Agent: fmt.Sprintf("bot-%d", i%3), Role: "ops", Server: "notion", Tool: "get_pages", Method: "tools/call",
		Args: []byte(`{"query":"\"seq\":7, a value that looks like the chain's"}`), Verdict: "allow", Code: "allowed"}
}

func recordIDs(recs []Record) (out []string) {
	for _, r := range recs {
		out = append(out, r.DecisionID)
	}
	return out
}

// span is the decision ids first, first+1, ... last, or down to last when
// it is the smaller.
func span(first, last int) (out []string) {
	step := 1
	if last < first {
		step = -1
	}
	for i := first; ; i += step {
		out = append(out, fmt.Sprintf("dec-%03d", i))
		if i == last {
			return out
		}
	}
}

// testLog is the contract of a Log holding the 30 records appendRecords
// writes from 0.
func testLog(t *testing.T, log Log) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		q    Query
		want []string
		more bool
	}{
		{"the latest, newest first", Query{Limit: 3}, span(29, 27), true},
		{"everything", Query{Limit: 1000}, span(29, 0), false},
		{"by agent", Query{Agent: "bot-1", Limit: 4}, []string{"dec-028", "dec-025", "dec-022", "dec-019"}, true},
		{"by decision", Query{DecisionID: "dec-004"}, []string{"dec-004"}, false},
		{"by time", Query{From: time.Date(2026, 11, 26, 9, 0, 10, 0, time.UTC), To: time.Date(2026, 11, 26, 9, 0, 12, 0, time.UTC)},
			span(12, 10), false},
		{"nothing", Query{Agent: "nobody"}, nil, false},
	} {
		recs, more, err := log.Search(ctx, tc.q)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := recordIDs(recs); !slices.Equal(got, tc.want) || more != tc.more {
			t.Errorf("%s: %v, more %v; want %v, more %v", tc.name, got, more, tc.want, tc.more)
		}
	}
	var all []Record
	if err := log.Records(ctx, func(r Record) bool { all = append(all, r); return true }); err != nil {
		t.Fatal(err)
	}
	if got := recordIDs(all); !slices.Equal(got, span(0, 29)) {
		t.Errorf("Records gave %v, want every record oldest first", got)
	}
	if all[0].Agent != "bot-0" || all[0].Verdict != "allow" || string(all[0].Args) == "" || all[0].Seq != 1 {
		t.Errorf("the first record came back as %+v", all[0])
	}
	n := 0
	if err := log.Records(ctx, func(Record) bool { n++; return n < 2 }); err != nil || n != 2 {
		t.Errorf("Records went on after yield said stop: %d records, %v", n, err)
	}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	n = 0
	err := log.Records(cctx, func(Record) bool {
		if n++; n == 2 {
			cancel()
		}
		return true
	})
	if !errors.Is(err, context.Canceled) || n != 2 {
		t.Errorf("Records went on after its context ended: %d records, %v", n, err)
	}
}

func TestFileLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	appendRecords(t, path, 0, 30)
	if files, _ := ChainFiles(path); len(files) < 3 {
		t.Fatalf("the log has %d files; the contract wants rotated ones too", len(files))
	}
	testLog(t, FileLog(path))
}

func TestStream(t *testing.T) {
	srv := redistest.Start(t)
	path := filepath.Join(t.TempDir(), FileName)
	appendRecords(t, path, 0, 30)
	s := NewStream(srv.Client(), &StreamOptions{Replica: "r1", Poll: 10 * time.Millisecond})
	stop := shipping(t, s, path)
	awaitShipped(t, srv.Client(), s, 30)
	stop()
	testLog(t, s)
	recs, _, err := s.Search(context.Background(), Query{Limit: 1})
	if err != nil || len(recs) != 1 || recs[0].Replica != "r1" {
		t.Errorf("a record from the stream = %+v, %v; want it to name replica r1", recs, err)
	}
}

// shipping runs s.Ship on path until the returned stop is called (or the
// test ends).
func shipping(t *testing.T, s *Stream, path string) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Ship(ctx, path) }()
	var stopped bool
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Ship: %v", err)
			}
		case <-time.After(hangGuard):
			t.Error("Ship did not return when its context ended")
		}
	}
	t.Cleanup(stop)
	return stop
}

const hangGuard = 10 * time.Second

// awaitShipped waits until s's stream holds n entries, failing the test
// if it never does or holds more.
func awaitShipped(t *testing.T, c *redis.Client, s *Stream, n int64) {
	t.Helper()
	deadline := time.Now().Add(hangGuard)
	for {
		got, err := c.XLen(context.Background(), s.key).Result()
		if err == nil && got == n {
			return
		}
		if got > n {
			t.Fatalf("the stream holds %d entries, want %d", got, n)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the stream holds %d entries (%v), want %d", got, err, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// streamSeqs is the seq of every record in the stream, oldest first, and
// the replica of each.
func streamSeqs(t *testing.T, s *Stream) (seqs []uint64, replicas []string) {
	t.Helper()
	msgs, err := s.client.XRange(context.Background(), s.key, "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		rec, err := entryRecord(m)
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, rec.Seq)
		replicas = append(replicas, m.Values["replica"].(string))
	}
	return seqs, replicas
}

func seqRange(first, last uint64) (out []uint64) {
	for s := first; s <= last; s++ {
		out = append(out, s)
	}
	return out
}

// Ship follows the file as it grows and rotates, and a restart of the
// replica resumes after the last record shipped: every record reaches the
// stream once.
func TestShipFollowsAndResumes(t *testing.T) {
	srv := redistest.Start(t)
	path := filepath.Join(t.TempDir(), FileName)
	s := NewStream(srv.Client(), &StreamOptions{Replica: "r1", Poll: 10 * time.Millisecond})

	stop := shipping(t, s, path) // before the file exists
	appendRecords(t, path, 0, 12)
	awaitShipped(t, srv.Client(), s, 12)
	appendRecords(t, path, 12, 12) // rotating as it goes
	awaitShipped(t, srv.Client(), s, 24)
	stop()

	appendRecords(t, path, 24, 6) // while no replica ships
	stop = shipping(t, s, path)
	awaitShipped(t, srv.Client(), s, 30)
	stop()
	seqs, replicas := streamSeqs(t, s)
	if !slices.Equal(seqs, seqRange(1, 30)) {
		t.Errorf("the stream holds seqs %v, want 1 to 30 once each, in order", seqs)
	}
	if replicas[0] != "r1" || replicas[29] != "r1" {
		t.Errorf("entries name replicas %v, want r1", replicas)
	}

	// A second replica ships its own file beside the first's.
	other := filepath.Join(t.TempDir(), FileName)
	appendRecords(t, other, 100, 5)
	s2 := NewStream(srv.Client(), &StreamOptions{Replica: "r2", Poll: 10 * time.Millisecond})
	shipping(t, s2, other)
	awaitShipped(t, srv.Client(), s, 35)
	if recs, _, err := s.Search(context.Background(), Query{Limit: 5}); err != nil || !slices.Equal(recordIDs(recs), span(104, 100)) {
		t.Errorf("the stream's newest records are %v, %v; want the second replica's", recordIDs(recs), err)
	}
}

// A backlog is shipped in order, batch after batch, but only as much of it
// as the stream keeps.
func TestShipBacklog(t *testing.T) {
	srv := redistest.Start(t)
	path := filepath.Join(t.TempDir(), FileName)
	appendRecords(t, path, 0, 1200) // over two batches, in many files
	s := NewStream(srv.Client(), &StreamOptions{Replica: "r1", Poll: 10 * time.Millisecond})
	stop := shipping(t, s, path)
	awaitShipped(t, srv.Client(), s, 1200)
	stop()
	if seqs, _ := streamSeqs(t, s); !slices.Equal(seqs, seqRange(1, 1200)) {
		t.Errorf("the stream holds %d seqs from %d to %d, want 1 to 1200 once each, in order", len(seqs), seqs[0], seqs[len(seqs)-1])
	}

	short := NewStream(srv.Client(), &StreamOptions{Key: "short:{audit}", Replica: "r1", MaxLen: 10, Poll: 10 * time.Millisecond})
	shipping(t, short, path)
	awaitShipped(t, srv.Client(), short, 10)
	if seqs, _ := streamSeqs(t, short); !slices.Equal(seqs, seqRange(1191, 1200)) {
		t.Errorf("a stream keeping 10 got seqs %v, want the last 10", seqs)
	}
}

// Records that following the file missed are found in the files: a
// record that does not follow the last one shipped sends Ship back to
// them.
func TestShipRecoversMissedRecords(t *testing.T) {
	srv := redistest.Start(t)
	path := filepath.Join(t.TempDir(), FileName)
	s := NewStream(srv.Client(), &StreamOptions{Replica: "r1", Poll: 10 * time.Millisecond})
	var mu sync.Mutex
	dropped := false
	s.tail = func(ctx context.Context, path string, opts *TailOptions, emit func([]byte) error) error {
		return Tail(ctx, path, opts, func(line []byte) error {
			mu.Lock()
			drop := !dropped && bytes.Contains(line, []byte(`"decision_id":"dec-005"`))
			dropped = dropped || drop
			mu.Unlock()
			if drop {
				return nil // as if it went by between two looks
			}
			return emit(line)
		})
	}
	shipping(t, s, path)
	// One file that does not rotate, and Ship following it before the
	// record it misses is written: no rotation sends Ship back to the
	// files, so the follower itself must notice the gap.
	d, err := NewFileDevice(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for i := range 10 {
		if i == 1 {
			awaitShipped(t, srv.Client(), s, 1)
		}
		if err := d.Write(streamRecord(i)); err != nil {
			t.Fatal(err)
		}
	}
	awaitShipped(t, srv.Client(), s, 10)
	if seqs, _ := streamSeqs(t, s); !slices.Equal(seqs, seqRange(1, 10)) {
		t.Errorf("the stream holds seqs %v, want 1 to 10 once each, in order", seqs)
	}
	mu.Lock()
	defer mu.Unlock()
	if !dropped {
		t.Error("the test never hid a record from Ship")
	}
}

// While Redis is down the replica keeps recording to its file; what it
// wrote meanwhile is shipped when Redis is back.
func TestShipWaitsOutRedis(t *testing.T) {
	srv := redistest.Start(t)
	path := filepath.Join(t.TempDir(), FileName)
	var logs syncbuf.Buffer
	s := NewStream(srv.Client(), &StreamOptions{Replica: "r1", Poll: 10 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	shipping(t, s, path)
	appendRecords(t, path, 0, 5)
	awaitShipped(t, srv.Client(), s, 5)

	srv.Stop()
	appendRecords(t, path, 5, 5)
	for deadline := time.Now().Add(hangGuard); !strings.Contains(logs.String(), "cannot ship audit records"); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("Ship never reported failing to ship; its log:\n%s", logs.String())
		}
	}
	srv.Restart() // empty: what was shipped before is gone with it
	awaitShipped(t, srv.Client(), s, 5)
	if seqs, _ := streamSeqs(t, s); !slices.Equal(seqs, seqRange(6, 10)) {
		t.Errorf("after the outage the stream holds seqs %v, want 6 to 10", seqs)
	}
	pos, err := s.position(context.Background(), "r1")
	if err != nil || pos.Seq != 10 || pos.Hash == "" {
		t.Errorf("the stream's position for r1 is %v, %v; want seq 10 and its hash", pos, err)
	}
}

func TestShipNeedsAReplicaName(t *testing.T) {
	srv := redistest.Start(t)
	if err := NewStream(srv.Client(), nil).Ship(context.Background(), filepath.Join(t.TempDir(), FileName)); err == nil {
		t.Error("Ship without a replica name succeeded")
	}
}

func TestLineSeq(t *testing.T) {
	for _, tc := range []struct {
		line string
		seq  uint64
		ok   bool
	}{
		{`{"args":{"q":",\"seq\":99,"},"seq":7,"prev":"00","hash":"11"}`, 7, true},
		{`{"args":{"a":1,"seq":99},"seq":12,"prev":"00","hash":"11"}`, 12, true},
		{`{"ts":"t","seq":0,"prev":"00","hash":"11"}`, 0, false},
		{`{"ts":"t","seq":x,"prev":"00"}`, 0, false},
		{`{"verdict":"allow"}`, 0, false},
	} {
		if seq, ok := lineSeq([]byte(tc.line)); seq != tc.seq || ok != tc.ok {
			t.Errorf("lineSeq(%s) = %d, %v; want %d, %v", tc.line, seq, ok, tc.seq, tc.ok)
		}
	}
}

// BenchmarkShip ships a backlog of b.N records, of the size a 2 KB
// tools/call leaves in the log, to a local Redis.
func BenchmarkShip(b *testing.B) {
	srv := redistest.Start(b)
	path := filepath.Join(b.TempDir(), FileName)
	d, err := NewFileDevice(path, &FileOptions{Sync: SyncNever})
	if err != nil {
		b.Fatal(err)
	}
	args := []byte(`{"query":"` + strings.Repeat("disk full on the primary database replica; ", 38) + `"}`)
	for i := range b.N {
		rec := &Record{Time: time.Now(), DecisionID: fmt.Sprintf("dec-%d", i), Agent: "bot", Role: "ops", Server: "notion",
			Tool: "get_pages", Method: "tools/call", Args: args, Verdict: "allow", Code: "allowed"}
		if err := d.Write(rec); err != nil {
			b.Fatal(err)
		}
	}
	d.Close()
	s := NewStream(srv.Client(), &StreamOptions{Replica: "r1", Poll: time.Millisecond, MaxLen: int64(b.N) + 1})
	b.ResetTimer()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Ship(ctx, path) }()
	for srv.Client().XLen(ctx, s.key).Val() < int64(b.N) {
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	cancel()
	<-done
}

// Tail prints the stream's last records, then those that arrive, as the
// lines the replicas' files hold.
func TestStreamTail(t *testing.T) {
	srv := redistest.Start(t)
	path := filepath.Join(t.TempDir(), FileName)
	s := NewStream(srv.Client(), &StreamOptions{Replica: "r1", Poll: 10 * time.Millisecond})
	shipping(t, s, path)
	var mu sync.Mutex
	var got []string
	seen := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(got)
	}
	tail := func(ctx context.Context, n int, follow bool) error {
		return s.Tail(ctx, n, follow, func(line []byte) error {
			var rec Record
			if err := json.Unmarshal(line, &rec); err != nil || rec.Seq == 0 {
				t.Errorf("emitted %q, not a record line of the file (%v)", line, err)
			}
			// The line names the replica whose chain it is in, and is
			// otherwise the file's.
			if !bytes.HasPrefix(line, []byte(`{"replica":"r1","`)) {
				t.Errorf("emitted %q, without its replica first", line)
			}
			mu.Lock()
			got = append(got, rec.DecisionID)
			mu.Unlock()
			return nil
		})
	}
	if err := tail(context.Background(), 3, false); err != nil || len(seen()) != 0 {
		t.Fatalf("the tail of an empty stream gave %v, %v", seen(), err)
	}

	appendRecords(t, path, 0, 5)
	awaitShipped(t, srv.Client(), s, 5)
	if err := tail(context.Background(), 3, false); err != nil || !slices.Equal(seen(), span(2, 4)) {
		t.Fatalf("the last 3 = %v, %v; want %v", seen(), err, span(2, 4))
	}

	mu.Lock()
	got = nil
	mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tail(ctx, 1, true) }()
	for deadline := time.Now().Add(hangGuard); len(seen()) < 1; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the backlog never came")
		}
	}
	appendRecords(t, path, 5, 3)
	for deadline := time.Now().Add(hangGuard); len(seen()) < 4; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("following gave %v", seen())
		}
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Error(err)
		}
	case <-time.After(hangGuard):
		t.Fatal("Tail did not return when its context ended")
	}
	if !slices.Equal(seen(), span(4, 7)) {
		t.Errorf("followed %v, want %v", seen(), span(4, 7))
	}
}

// A file whose end was cut, or rewritten and chained anew, after its
// records were shipped is not shipped again: the replica says so, the
// stream and its position stay as they were, and the file fails to verify
// against the stream's head.
func TestShipRefusesAFileCutOrRewritten(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(t *testing.T, path string, lines []string)
		legacy bool // the position holds the seq alone, as older versions wrote it
	}{
		{"end cut", func(t *testing.T, path string, lines []string) { writeLines(t, path, lines[:7]) }, false},
		{"all cut", func(t *testing.T, path string, lines []string) { writeLines(t, path, nil) }, false},
		{"tail rewritten past the position", func(t *testing.T, path string, lines []string) {
			writeLines(t, path, lines[:7])
			writeRecords(t, path, nil, 50, 54) // seq 8 to 12, chained anew
		}, false},
		{"tail rewritten to the position", func(t *testing.T, path string, lines []string) {
			writeLines(t, path, lines[:7])
			writeRecords(t, path, nil, 50, 52)
		}, false},
		{"tail rewritten, seq-only position", func(t *testing.T, path string, lines []string) {
			writeLines(t, path, lines[:7])
			writeRecords(t, path, nil, 50, 54)
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			srv := redistest.Start(t)
			path := filepath.Join(t.TempDir(), FileName)
			writeRecords(t, path, nil, 1, 10)
			var logs syncbuf.Buffer
			s := NewStream(srv.Client(), &StreamOptions{Replica: "r1", Poll: 10 * time.Millisecond,
				Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			stop := shipping(t, s, path)
			awaitShipped(t, srv.Client(), s, 10)
			stop()
			if tc.legacy {
				srv.Client().HSet(ctx, s.shippedKey(), "r1", 10)
			}
			pos := srv.Client().HGet(ctx, s.shippedKey(), "r1").Val()

			tc.change(t, path, readLines(t, path))
			stop = shipping(t, s, path) // the replica restarts
			for deadline := time.Now().Add(hangGuard); !strings.Contains(logs.String(), "not shipping audit records"); time.Sleep(5 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("Ship never reported the file differs; its log:\n%s", logs.String())
				}
			}
			stop()
			if seqs, _ := streamSeqs(t, s); !slices.Equal(seqs, seqRange(1, 10)) {
				t.Errorf("the stream holds seqs %v, want 1 to 10 as shipped before", seqs)
			}
			if got := srv.Client().HGet(ctx, s.shippedKey(), "r1").Val(); got != pos {
				t.Errorf("the position moved from %s to %s", pos, got)
			}
			head, err := s.Head(ctx, "r1")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := VerifyAnchored([]Anchor{head}, path); err == nil {
				t.Errorf("the changed file verifies against the stream's head %v", head)
			}
		})
	}
}

// A batch whose reply comes too late, after Redis ran it, is sent again
// and adds nothing: every record reaches the stream once.
func TestShipLateReply(t *testing.T) {
	srv := redistest.Start(t)
	proxy := srv.Proxy()
	path := filepath.Join(t.TempDir(), FileName)
	s := NewStream(proxy.Client(), &StreamOptions{Replica: "r1", Poll: 10 * time.Millisecond})
	shipping(t, s, path)
	writeRecords(t, path, nil, 1, 5)
	awaitShipped(t, srv.Client(), s, 5)
	proxy.DelayReply(`"decision_id"`, 2*redistest.ProxyReadTimeout) // the records' lines are in the command
	writeRecords(t, path, nil, 6, 10)
	for deadline := time.Now().Add(hangGuard); ; time.Sleep(5 * time.Millisecond) {
		if pos, err := s.position(context.Background(), "r1"); err == nil && pos.Seq == 10 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("records 6 to 10 were never shipped")
		}
	}
	time.Sleep(3 * redistest.ProxyReadTimeout) // for the late reply, and any batch sent again
	if seqs, _ := streamSeqs(t, s); !slices.Equal(seqs, seqRange(1, 10)) {
		t.Errorf("the stream holds seqs %v, want 1 to 10 once each", seqs)
	}
}

// Arguments over StreamArgsMax, as long as a request body may be and in
// denied calls too, stay out of the stream: its copy says how long they
// were, the file holds them, and every reader of the stream copes.
func TestShipLeavesOutLargeArgs(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	path := filepath.Join(t.TempDir(), FileName)
	dev, err := NewFileDevice(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	big := json.RawMessage(`{"q":"` + strings.Repeat("A", 1<<20-16) + `"}`)
	const n = 20
	for i := range n {
		rec := testRecord(i)
		if i%2 == 1 { // the last too
			rec.Args, rec.Verdict, rec.Code = big, "deny", "not_granted"
		}
		if err := dev.Write(rec); err != nil {
			t.Fatal(err)
		}
	}
	dev.Close()
	s := NewStream(srv.Client(), &StreamOptions{Replica: "r1", Poll: 10 * time.Millisecond})
	stop := shipping(t, s, path)
	awaitShipped(t, srv.Client(), s, n)
	stop()

	used, err := srv.Client().MemoryUsage(ctx, s.key).Result()
	if err != nil {
		t.Fatal(err)
	}
	if used > n*2*StreamArgsMax {
		t.Errorf("the stream takes %d KiB of Redis for %d records, half with 1 MiB arguments", used>>10, n)
	}
	var recs []Record
	if err := s.Records(ctx, func(r Record) bool { recs = append(recs, r); return true }); err != nil || len(recs) != n {
		t.Fatalf("Records gave %d records, %v", len(recs), err)
	}
	file := readLines(t, path)
	for i, rec := range recs {
		switch {
		case rec.Seq != uint64(i+1) || rec.Hash != hashOf(file[i]):
			t.Errorf("record %d from the stream has seq %d, hash %s; want the file's, %d and %s", i, rec.Seq, rec.Hash, i+1, hashOf(file[i]))
		case i%2 == 1 && (rec.Args != nil || rec.ArgsCut != len(big)):
			t.Errorf("record %d from the stream has %d bytes of arguments, args_cut %d; want none, and %d", i, len(rec.Args), rec.ArgsCut, len(big))
		case i%2 == 0 && (len(rec.Args) == 0 || rec.ArgsCut != 0):
			t.Errorf("record %d from the stream has arguments %s, args_cut %d; want them whole", i, rec.Args, rec.ArgsCut)
		}
	}
	if recs, _, err := s.Search(ctx, Query{Limit: 1}); err != nil || len(recs) != 1 || recs[0].ArgsCut != len(big) || recs[0].Seq != n {
		t.Errorf("Search = %+v, %v", recs, err)
	}
	var tailed []string
	if err := s.Tail(ctx, 2, false, func(line []byte) error { tailed = append(tailed, string(line)); return nil }); err != nil ||
		len(tailed) != 2 || !strings.Contains(tailed[1], fmt.Sprintf(`"args_cut":%d,`, len(big))) {
		t.Errorf("Tail gave %.200q, %v", tailed, err)
	}
	head, err := s.Head(ctx, "r1")
	if want := (Anchor{Seq: n, Hash: hashOf(file[n-1])}); err != nil || head != want {
		t.Errorf("Head = %v, %v; want %v", head, err, want)
	}
	if _, err := VerifyAnchored([]Anchor{head}, path); err != nil {
		t.Errorf("the file against the stream's head: %v", err)
	}
}
