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

// testList is the contract every List meets. now is the list's clock,
// wait lets that much of it pass, and lose has the list's store lose its
// data (a Redis restarted without persistence, a database deleted) and
// returns the list over it.
func testList(t *testing.T, l List, now func() time.Time, wait func(time.Duration), lose func() List) {
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
		t.Error("an id never added is live")
	}
	add("a", now().Add(time.Hour))
	if !has("a") {
		t.Error("an added id is not live")
	}
	if has("b") {
		t.Error("adding made another id live")
	}
	add("b", now().Add(-time.Second))
	if has("b") {
		t.Error("an id added with an until already past is live")
	}
	add("short", now().Add(500*time.Millisecond))
	if !has("short") {
		t.Error("an id with half a second left is not live")
	}
	wait(time.Second)
	if has("short") {
		t.Error("an id is still live after its until")
	}
	if !has("a") {
		t.Error("an id was forgotten before its until")
	}

	// Signing out ends one session, and no other.
	add("out", now().Add(time.Hour))
	if err := l.Remove(ctx, "out"); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if has("out") {
		t.Error("a removed id is live")
	}
	if !has("a") {
		t.Error("removing an id ended another")
	}
	if err := l.Remove(ctx, "never"); err != nil {
		t.Errorf("Remove of an id never added: %v", err)
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

	// A store that loses its data ends every session: none that was
	// signed out can live again.
	l = lose()
	if has("a") {
		t.Error("a session lived on after the list lost its data")
	}
	if has("out") {
		t.Error("a signed-out session lives again after the list lost its data")
	}
	add("after", now().Add(time.Hour))
	if !has("after") {
		t.Error("a session begun after the list lost its data is not live")
	}
}

func newClock() *testclock.Clock { return testclock.New(time.Date(2026, 11, 26, 9, 0, 0, 0, time.UTC)) }

func TestMemory(t *testing.T) {
	c := newClock()
	// A list in memory loses its data with its process.
	testList(t, NewMemory(c.Now), c.Now, c.Advance, func() List { return NewMemory(c.Now) })
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
	testList(t, l, c.Now, c.Advance, func() List {
		lost, err := store.Open(filepath.Join(t.TempDir(), "amg.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { lost.Close() })
		l, err := NewSQLite(lost, c.Now)
		if err != nil {
			t.Fatal(err)
		}
		return l
	})

	// A session survives a restart: a new List over the reopened file.
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
	if err := db.QueryRow(`SELECT count(*) FROM console_sessions`).Scan(&n); err != nil || n != 1 {
		t.Errorf("table holds %d rows (%v), want only the unexpired one", n, err)
	}
	db.Close()
	if _, err := l.Has(context.Background(), "later"); err == nil {
		t.Error("Has on a closed database succeeded")
	}
}

// A session ends at its until, not a moment after, in every list whose
// clock can be set to that instant.
func TestSessionEndsAtItsUntil(t *testing.T) {
	c := newClock()
	db, err := store.Open(filepath.Join(t.TempDir(), "amg.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	sqlite, err := NewSQLite(db, c.Now)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	until := c.Now().Add(time.Second)
	lists := map[string]List{"memory": NewMemory(c.Now), "sqlite": sqlite}
	for name, l := range lists {
		if err := l.Add(ctx, "s", until); err != nil {
			t.Fatalf("%s: Add: %v", name, err)
		}
	}
	c.Advance(time.Second)
	for name, l := range lists {
		if ok, err := l.Has(ctx, "s"); err != nil || ok {
			t.Errorf("%s: Has at the until = %v, %v; want false", name, ok, err)
		}
	}
}

func TestRedis(t *testing.T) {
	rs := redistest.Start(t)
	// Redis expires keys on its own clock: the contract runs in real time.
	l := NewRedis(rs.Client())
	testList(t, l, time.Now, time.Sleep, func() List { rs.Restart(); return l })

	// Replicas share the list: a session begun on one is live on all,
	// and ended on one ends on all.
	a, b := NewRedis(rs.Client()), NewRedis(rs.Client())
	ctx := context.Background()
	if err := a.Add(ctx, "shared", time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.Has(ctx, "shared"); err != nil || !ok {
		t.Errorf("the other replica's Has = %v, %v; want true", ok, err)
	}
	if err := b.Remove(ctx, "shared"); err != nil {
		t.Fatal(err)
	}
	if ok, err := a.Has(ctx, "shared"); err != nil || ok {
		t.Errorf("after the other replica removed it, Has = %v, %v; want false", ok, err)
	}
	rs.Stop()
	if _, err := b.Has(ctx, "shared"); err == nil {
		t.Error("Has with Redis down succeeded")
	}
	if err := a.Add(ctx, "x", time.Now().Add(time.Hour)); err == nil {
		t.Error("Add with Redis down succeeded")
	}
	if err := a.Remove(ctx, "x"); err == nil {
		t.Error("Remove with Redis down succeeded")
	}
}
