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

type counter interface {
	Inc(ctx context.Context, role string, t time.Time) error
	Counts(ctx context.Context, from, to time.Time) ([]Count, error)
}

// testCounter is the contract every counter implementation passes.
func testCounter(t *testing.T, c counter) {
	ctx := context.Background()
	day1 := time.Date(2026, 11, 24, 23, 59, 0, 0, time.UTC)
	day2 := day1.Add(2 * time.Minute) // the next UTC day
	// 01:30 in UTC+2 is still the 24th in UTC.
	local := time.Date(2026, 11, 25, 1, 30, 0, 0, time.FixedZone("UTC+2", 2*3600))
	for _, inc := range []struct {
		role string
		at   time.Time
	}{{"a", day1}, {"a", day1}, {"a", local}, {"a", day2}, {"b", day2}} {
		if err := c.Inc(ctx, inc.role, inc.at); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 25 {
				if err := c.Inc(ctx, "c", day1); err != nil {
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
	want := []Count{{"a", "2026-11-24", 3}, {"a", "2026-11-25", 1}, {"b", "2026-11-25", 1}, {"c", "2026-11-24", 100}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("counts (-want +got):\n%s", diff)
	}
	got, _ = c.Counts(ctx, day2, day2)
	if diff := cmp.Diff(want[1:3], got); diff != "" {
		t.Errorf("counts of one day (-want +got):\n%s", diff)
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
}

func TestRedis(t *testing.T) {
	rs := redistest.Start(t)
	testCounter(t, NewRedis(rs.Client()))
	// Two replicas count into one report.
	a, b := NewRedis(rs.Client()), NewRedis(rs.Client())
	day := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	a.Inc(context.Background(), "shadowed", day)
	b.Inc(context.Background(), "shadowed", day)
	got, err := a.Counts(context.Background(), day, day)
	if err != nil || len(got) != 1 || got[0].N != 2 {
		t.Errorf("counts across replicas = %v, %v; want 2", got, err)
	}
	rs.Stop()
	if err := a.Inc(context.Background(), "shadowed", day); err == nil {
		t.Error("counting with Redis down succeeded")
	}
}
