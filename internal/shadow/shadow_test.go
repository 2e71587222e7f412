package shadow

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/amgateway/amg/internal/redistest"
	"github.com/amgateway/amg/internal/store"
)

// testCounter is the contract every counter implementation passes.
func testCounter(t *testing.T, c Store) {
	ctx := context.Background()
	day1 := time.Date(2026, 11, 24, 23, 59, 0, 0, time.UTC)
	day2 := day1.Add(2 * time.Minute) // the next UTC day
	// 01:30 in UTC+2 is still the 24th in UTC.
	local := time.Date(2026, 11, 25, 1, 30, 0, 0, time.FixedZone("UTC+2", 2*3600))
	for _, add := range []struct {
		role           string
		at             time.Time
		calls, denials int64
	}{
		{"a", day1, 1, 1}, {"a", day1, 3, 1}, {"a", local, 1, 1}, {"a", day2, 2, 1}, {"b", day2, 1, 1},
		{"calls-only", day2, 7, 0}, {"nothing", day2, 0, 0},
	} {
		if err := c.Add(ctx, add.role, add.at, add.calls, add.denials); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 25 {
				if err := c.Add(ctx, "c", day1, 2, 1); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	got, err := c.Counts(ctx, day1, day2)
	if err != nil {
		t.Fatal(err)
	}
	want := []Count{
		{"a", "2026-11-24", 3, 5}, {"a", "2026-11-25", 1, 2}, {"b", "2026-11-25", 1, 1},
		{"c", "2026-11-24", 100, 200}, {"calls-only", "2026-11-25", 0, 7},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("counts (-want +got):\n%s", diff)
	}
	got, _ = c.Counts(ctx, day2, day2)
	if diff := cmp.Diff([]Count{want[1], want[2], want[4]}, got); diff != "" {
		t.Errorf("counts of one day (-want +got):\n%s", diff)
	}
}

// testOnceAdder is the contract of a store that knows a write sent
// again by its id.
func testOnceAdder(t *testing.T, c Store) {
	t.Helper()
	s, ok := c.(onceAdder)
	if !ok {
		t.Fatalf("%T takes no write under an id", c)
	}
	ctx := context.Background()
	day := time.Date(2026, 10, 1, 12, 0, 0, 0, time.UTC)
	for _, id := range []string{"w1", "w1", "w2"} {
		if err := s.AddOnce(ctx, id, "once", day, 3, 1); err != nil {
			t.Fatal(err)
		}
	}
	got, err := c.Counts(ctx, day, day)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]Count{{"once", "2026-10-01", 2, 6}}, got); diff != "" {
		t.Errorf("two writes, one of them sent twice (-want +got):\n%s", diff)
	}
	applied, err := s.Applied(ctx, []string{"w1", "w2", "w3"})
	if want := map[string]bool{"w1": true, "w2": true, "w3": false}; err != nil || !cmp.Equal(applied, want) {
		t.Errorf("writes applied: %v, %v; want %v", applied, err, want)
	}
}

func TestMemory(t *testing.T) { testCounter(t, NewMemory()) }

func TestSQLite(t *testing.T) {
	db, err := store.Open(filepath.Join(t.TempDir(), "amg.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	c, err := NewSQLite(db)
	if err != nil {
		t.Fatal(err)
	}
	testCounter(t, c)
	testOnceAdder(t, c)
}

func TestRedis(t *testing.T) {
	rs := redistest.Start(t)
	testCounter(t, NewRedis(rs.Client()))
	testOnceAdder(t, NewRedis(rs.Client()))
	// Two replicas count into one report.
	a, b := NewRedis(rs.Client()), NewRedis(rs.Client())
	day := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	a.Add(context.Background(), "shadowed", day, 3, 1)
	b.Add(context.Background(), "shadowed", day, 2, 1)
	got, err := a.Counts(context.Background(), day, day)
	if err != nil || len(got) != 1 || got[0].N != 2 || got[0].Calls != 5 {
		t.Errorf("counts across replicas = %v, %v; want 2 denials of 5 calls", got, err)
	}
	rs.Stop()
	if err := a.Add(context.Background(), "shadowed", day, 1, 1); err == nil {
		t.Error("counting with Redis down succeeded")
	}
}

// A database made before calls were counted keeps its denials, gains the
// column, and counts calls from then on; processes opening it at once
// all succeed.
func TestSQLiteMigratesATableWithoutCalls(t *testing.T) {
	path := filepath.Join(t.TempDir(), "amg.db")
	db, err := store.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`CREATE TABLE shadow_denies (role TEXT NOT NULL, day TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (role, day));
		INSERT INTO shadow_denies (role, day, n) VALUES ('old', '2026-11-24', 4)`); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			other, err := store.Open(path)
			if err != nil {
				t.Error(err)
				return
			}
			defer other.Close()
			if _, err := NewSQLite(other); err != nil {
				t.Errorf("opening at once: %v", err)
			}
		})
	}
	wg.Wait()
	c, err := NewSQLite(db)
	if err != nil {
		t.Fatal(err)
	}
	day := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	if err := c.Add(context.Background(), "old", day, 3, 1); err != nil {
		t.Fatal(err)
	}
	got, err := c.Counts(context.Background(), day, day)
	if want := []Count{{"old", "2026-11-24", 5, 3}}; err != nil || !cmp.Equal(got, want) {
		t.Errorf("counts = %v, %v; want %v", got, err, want)
	}
}
