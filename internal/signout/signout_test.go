package signout

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/amgateway/amg/internal/redistest"
	"github.com/amgateway/amg/internal/store"
	"github.com/amgateway/amg/internal/testclock"
)

// testList is the contract every List meets. now is the list's clock, and
// wait lets that much of it pass.
func testList(t *testing.T, l List, now func() time.Time, wait func(time.Duration)) {
	ctx := context.Background()
	has := func(id string) bool {
		t.Helper()
		ok, err := l.Has(ctx, id)
		if err != nil {
			t.Fatalf("Has(%q): %v", id, err)
		}
		return ok
	}
	add := func(id string, until time.Time) {
		t.Helper()
		if err := l.Add(ctx, id, until); err != nil {
			t.Fatalf("Add(%q): %v", id, err)
		}
	}

	if has("a") {
		t.Error("an id never added is signed out")
	}
	add("a", now().Add(time.Hour))
	if !has("a") {
		t.Error("an added id is not signed out")
	}
	if has("b") {
		t.Error("adding a signed out another id")
	}
	// Adding again with an earlier until keeps the later one.
	add("a", now().Add(time.Second))
	add("b", now().Add(-time.Second))
	if has("b") {
		t.Error("an id added with an until already past is signed out")
	}
	add("short", now().Add(500*time.Millisecond))
	if !has("short") {
		t.Error("an id with half a second left is not signed out")
	}
	wait(time.Second)
	if has("short") {
		t.Error("an id is still signed out after its until")
	}
	if !has("a") {
		t.Error("adding an id again with an earlier until shortened it")
	}

	if err := l.Add(ctx, "", now().Add(time.Hour)); err == nil {
		t.Error("Add of an empty id succeeded")
	}
	if err := l.Add(ctx, "never", time.Time{}); err == nil {
		t.Error("Add without an until succeeded: the id would be kept forever")
	}

	// Many requests check sessions at once.
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 20 {
				if ok, err := l.Has(ctx, "a"); err != nil || !ok {
					t.Errorf("concurrent Has = %v, %v", ok, err)
					return
				}
			}
		})
	}
	wg.Wait()
}

func newClock() *testclock.Clock { return testclock.New(time.Date(2026, 11, 26, 9, 0, 0, 0, time.UTC)) }

func TestMemory(t *testing.T) {
	c := newClock()
	testList(t, NewMemory(c.Now), c.Now, c.Advance)
}

func TestSQLite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "amg.db")
	db, err := store.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	c := newClock()
	l, err := NewSQLite(db, c.Now)
	if err != nil {
		t.Fatal(err)
	}
	testList(t, l, c.Now, c.Advance)

	// A sign-out survives a restart: a new List over the reopened file.
	if err := l.Add(context.Background(), "before-restart", c.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if db, err = store.Open(path); err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if l, err = NewSQLite(db, c.Now); err != nil {
		t.Fatal(err)
	}
	if ok, err := l.Has(context.Background(), "before-restart"); err != nil || !ok {
		t.Errorf("after a restart Has = %v, %v; want true", ok, err)
	}
	// Adding forgets what has expired, so the table does not grow.
	c.Advance(2 * time.Hour)
	if err := l.Add(context.Background(), "later", c.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM console_signouts`).Scan(&n); err != nil || n != 1 {
		t.Errorf("table holds %d rows (%v), want only the unexpired one", n, err)
	}
	db.Close()
	if _, err := l.Has(context.Background(), "later"); err == nil {
		t.Error("Has on a closed database succeeded")
	}
}

func TestRedis(t *testing.T) {
	rs := redistest.Start(t)
	// Redis expires keys on its own clock: the contract runs in real time.
	testList(t, NewRedis(rs.Client()), time.Now, time.Sleep)

	// Replicas share the list.
	a, b := NewRedis(rs.Client()), NewRedis(rs.Client())
	ctx := context.Background()
	if err := a.Add(ctx, "shared", time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.Has(ctx, "shared"); err != nil || !ok {
		t.Errorf("the other replica's Has = %v, %v; want true", ok, err)
	}
	rs.Stop()
	if _, err := b.Has(ctx, "shared"); err == nil {
		t.Error("Has with Redis down succeeded")
	}
	if err := a.Add(ctx, "x", time.Now().Add(time.Hour)); err == nil {
		t.Error("Add with Redis down succeeded")
	}
}
