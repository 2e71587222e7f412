package shadow

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/amgateway/amg/internal/redistest"
	"github.com/amgateway/amg/internal/store"
)

func openSQLite(t *testing.T) *SQLite {
	t.Helper()
	db, err := store.Open(filepath.Join(t.TempDir(), "amg.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	c, err := NewSQLite(db)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// A Batch answers as its store would, before and after it writes, and
// what it held reaches the store on Close.
func TestBatch(t *testing.T) {
	sqlite := openSQLite(t)
	b := NewBatch(sqlite, time.Hour, nil)
	testCounter(t, b)
	from, to := time.Date(2026, 11, 24, 0, 0, 0, 0, time.UTC), time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC)
	before, err := b.Counts(context.Background(), from, to)
	if err != nil {
		t.Fatal(err)
	}
	if stored, _ := sqlite.Counts(context.Background(), from, to); len(stored) != 0 {
		t.Fatalf("the store has %v before the first write", stored)
	}
	if err := b.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	stored, err := sqlite.Counts(context.Background(), from, to)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(before, stored); diff != "" {
		t.Errorf("the store after Close differs from what the batch counted (-batch +store):\n%s", diff)
	}
	// Counts the store has and counts still pending add up.
	b = NewBatch(sqlite, time.Hour, nil)
	defer b.Close(context.Background())
	b.Add(context.Background(), "a", from, 10, 2)
	got, _ := b.Counts(context.Background(), from, from)
	if got[0].Role != "a" || got[0].Calls != before[0].Calls+10 || got[0].N != before[0].N+2 {
		t.Errorf("stored %v and pending 10 calls, 2 denials read as %v", before[0], got[0])
	}
}

// The batch writes on its own, every interval.
func TestBatchWritesPeriodically(t *testing.T) {
	sqlite := openSQLite(t)
	b := NewBatch(sqlite, 10*time.Millisecond, nil)
	defer b.Close(context.Background())
	day := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	b.Add(context.Background(), "r", day, 4, 1)
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := sqlite.Counts(context.Background(), day, day)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) == 1 && got[0] == (Count{"r", "2026-11-24", 1, 4}) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the store holds %v, ten seconds after the counts were added", got)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// failing is a store whose writes fail while down is set.
type failing struct {
	*Memory
	down atomic.Bool
}

func (f *failing) Add(ctx context.Context, role string, t time.Time, calls, denials int64) error {
	if f.down.Load() {
		return errors.New("store down")
	}
	return f.Memory.Add(ctx, role, t, calls, denials)
}

// Counts a write fails to store are kept, and stored by the next write,
// with what came in between; meanwhile Counts still sees them.
func TestBatchKeepsCountsAFailedWriteLost(t *testing.T) {
	s := &failing{Memory: NewMemory()}
	b := NewBatch(s, time.Hour, nil)
	ctx := context.Background()
	day := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	b.Add(ctx, "r", day, 3, 1)
	s.down.Store(true)
	if err := b.flush(ctx); err == nil {
		t.Fatal("a write to a store that is down succeeded")
	}
	b.Add(ctx, "r", day, 2, 0)
	want := []Count{{"r", "2026-11-24", 1, 5}}
	if got, _ := b.Counts(ctx, day, day); !cmp.Equal(got, want) {
		t.Errorf("counts after a failed write = %v, want %v", got, want)
	}
	s.down.Store(false)
	if err := b.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Memory.Counts(ctx, day, day); !cmp.Equal(got, want) {
		t.Errorf("stored after the failed write and Close: %v, want %v", got, want)
	}
}

// A write to Redis whose reply comes too late fails, though Redis stored
// its counts: sent again, by go-redis or by the batch's next write, it is
// not counted twice.
func TestBatchCountsAWriteWhoseReplyCameLateOnce(t *testing.T) {
	srv := redistest.Start(t)
	p := srv.Proxy()
	b := NewBatch(NewRedis(p.Client()), time.Hour, nil)
	ctx := context.Background()
	day := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	b.Add(ctx, "late-role", day, 10, 3)
	p.DelayReply("late-role", 2*redistest.ProxyReadTimeout)
	first := b.flush(ctx)
	b.Add(ctx, "late-role", day, 1, 0)
	if err := b.Close(ctx); err != nil {
		t.Fatal(err)
	}
	want := []Count{{"late-role", "2026-11-24", 3, 11}}
	if got, err := NewRedis(srv.Client()).Counts(ctx, day, day); err != nil || !cmp.Equal(got, want) {
		t.Errorf("stored after a write whose reply came late (%v), and another: %v %v, want %v", first, got, err, want)
	}
}

// lostReplies is a store that takes writes under their ids, as Redis
// and SQLite do, and reports each first write failed though it stored
// it: a reply lost, a deadline that passed as the write committed.
type lostReplies struct {
	*Memory
	mu  sync.Mutex
	ids map[string]bool
}

func (s *lostReplies) AddOnce(ctx context.Context, id, role string, t time.Time, calls, denials int64) error {
	s.mu.Lock()
	seen := s.ids[id]
	s.ids[id] = true
	s.mu.Unlock()
	if seen {
		return nil
	}
	s.Memory.Add(ctx, role, t, calls, denials)
	return errors.New("reply lost")
}

func (s *lostReplies) Applied(_ context.Context, ids []string) (map[string]bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	applied := map[string]bool{}
	for _, id := range ids {
		applied[id] = s.ids[id]
	}
	return applied, nil
}

// A write the store holds though it reported it failed counts once in
// what the batch reports while it waits to be sent again, and once after.
func TestBatchCountsAWriteStoredThoughItFailedOnce(t *testing.T) {
	s := &lostReplies{Memory: NewMemory(), ids: map[string]bool{}}
	b := NewBatch(s, time.Hour, nil)
	ctx := context.Background()
	day := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	b.Add(ctx, "late-role", day, 10, 3)
	if err := b.flush(ctx); err == nil {
		t.Fatal("the write did not fail")
	}
	want := []Count{{"late-role", "2026-11-24", 3, 10}}
	if got, err := b.Counts(ctx, day, day); err != nil || !cmp.Equal(got, want) {
		t.Errorf("counts while the write waits to be sent again: %v %v, want %v", got, err, want)
	}
	if err := b.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Counts(ctx, day, day); !cmp.Equal(got, want) {
		t.Errorf("stored once sent again: %v, want %v", got, want)
	}
}
