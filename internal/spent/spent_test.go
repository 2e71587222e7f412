package spent

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/amgateway/amg/internal/redistest"
)

// testLedger is the contract every Ledger runs. lose has the ledger's
// store lose its data (a Redis restarted without persistence, a process
// restarted) and returns the ledger over it.
func testLedger(t *testing.T, l Ledger, lose func() Ledger) {
	ctx := context.Background()
	// Decisions made now.
	later := time.Now().Add(lifetime)
	if first, err := l.Spend(ctx, "d1", later); err != nil || !first {
		t.Fatalf("first spending of d1: %v, %v", first, err)
	}
	if first, err := l.Spend(ctx, "d1", later); err != nil || first {
		t.Errorf("second spending of d1: %v, %v; want it refused", first, err)
	}
	if first, err := l.Spend(ctx, "d2", later); err != nil || !first {
		t.Errorf("first spending of d2: %v, %v", first, err)
	}

	// Of many spending one id at once, one is first.
	var firsts atomic.Int32
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			if first, err := l.Spend(ctx, "race", later); err == nil && first {
				firsts.Add(1)
			}
		})
	}
	wg.Wait()
	if n := firsts.Load(); n != 1 {
		t.Errorf("%d first spendings of one id, want 1", n)
	}

	// An id is kept until its decision expires (and then forgotten: see
	// TestMemoryForgets, and the key's lifetime in TestRedis).
	if first, _ := l.Spend(ctx, "d1", later); first {
		t.Error("d1 was forgotten before its expiry")
	}

	// A ledger that lost its data refuses the decisions made before:
	// any may have been served. (Expiries are in milliseconds: the loss
	// comes a millisecond after the decisions were made.)
	time.Sleep(2 * time.Millisecond)
	l = lose()
	for _, id := range []string{"d1", "never-spent"} {
		if first, err := l.Spend(ctx, id, later); !errors.Is(err, ErrBefore) || first {
			t.Errorf("spending %s, made before the ledger lost its data: %v, %v; want ErrBefore", id, first, err)
		}
	}
	if first, err := l.Spend(ctx, "d3", time.Now().Add(lifetime)); err != nil || !first {
		t.Errorf("first spending of a decision made after the ledger lost its data: %v, %v", first, err)
	}
}

func TestMemory(t *testing.T) {
	// A ledger in memory loses its data with its process.
	testLedger(t, NewMemory(nil), func() Ledger { return NewMemory(nil) })
}

func TestRedis(t *testing.T) {
	srv := redistest.Start(t)
	l := NewRedis(srv.Client())
	ctx := context.Background()
	if err := l.Begin(ctx); err != nil {
		t.Fatal(err)
	}
	testLedger(t, l, func() Ledger { srv.Restart(); return l })

	// A replica that starts after Redis lost its data does not hide the
	// loss from those running: it finds the ledger begun anew, or begins
	// it itself, and the decisions made before stay refused.
	made := time.Now().Add(lifetime)
	if first, err := l.Spend(ctx, "before", made); err != nil || !first {
		t.Fatalf("first spending: %v, %v", first, err)
	}
	time.Sleep(10 * time.Millisecond)
	srv.Restart()
	if err := NewRedis(srv.Client()).Begin(ctx); err != nil {
		t.Fatal(err)
	}
	if first, err := l.Spend(ctx, "before", made); !errors.Is(err, ErrBefore) || first {
		t.Errorf("a decision spent before the loss, after a replica began the ledger: %v, %v; want ErrBefore", first, err)
	}
	// A replica that starts later leaves the ledger as it is.
	since := srv.Client().Get(ctx, sinceKey).Val()
	time.Sleep(10 * time.Millisecond)
	if err := NewRedis(srv.Client()).Begin(ctx); err != nil {
		t.Fatal(err)
	}
	if got := srv.Client().Get(ctx, sinceKey).Val(); got != since || since == "" {
		t.Errorf("a second Begin moved the ledger's beginning from %q to %q", since, got)
	}

	// Replicas sharing the Redis share what is spent.
	a, b := NewRedis(srv.Client()), NewRedis(srv.Client())
	a.Spend(ctx, "shared", time.Now().Add(time.Minute))
	if first, _ := b.Spend(ctx, "shared", time.Now().Add(time.Minute)); first {
		t.Error("a decision spent on one replica was taken by another")
	}
	// A decision's key outlives it by the clock margin, so that a replica
	// whose clock is behind the spender's does not take a replay, and no
	// longer. (A decision expiring now was made before this test's
	// Redis began its ledger: the ledger is made older.)
	srv.Client().Set(ctx, sinceKey, 0, 0)
	a.Spend(ctx, "expiring", time.Now().Add(time.Millisecond))
	if ttl := srv.Client().PTTL(ctx, keyPrefix+"expiring").Val(); ttl < time.Second || ttl > 3*time.Second {
		t.Errorf("the key of a decision expiring now lives %v, want about %v", ttl, clockMargin)
	}
	srv.Stop()
	if _, err := a.Spend(ctx, "down", time.Now().Add(time.Minute)); err == nil {
		t.Error("Spend with Redis down did not fail")
	}
}

// A spending whose reply comes too late, so that go-redis sends it again,
// is still its first: the retry finds the ledger's entry its own.
func TestRedisSpendRetried(t *testing.T) {
	p := redistest.Start(t).Proxy()
	client := p.Client()
	l := NewRedis(client)
	ctx := context.Background()
	if err := l.Begin(ctx); err != nil {
		t.Fatal(err)
	}
	p.DelayReply("retried", 2*redistest.ProxyReadTimeout)
	if first, err := l.Spend(ctx, "retried", time.Now().Add(time.Minute)); err != nil || !first {
		t.Errorf("a first spending sent twice: %v, %v; want it first", first, err)
	}
	if first, err := l.Spend(ctx, "retried", time.Now().Add(time.Minute)); err != nil || first {
		t.Errorf("a second spending: %v, %v; want it refused", first, err)
	}
}

// Memory refuses a decision spent again up to the last instant before its
// expiry.
func TestMemoryKeepsUntilExpiry(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 11, 27, 9, 0, 0, 0, time.UTC)
	m := NewMemory(func() time.Time { return now })
	until := now.Add(30 * time.Second)
	if first, err := m.Spend(ctx, "d1", until); err != nil || !first {
		t.Fatalf("first spending of d1: %v, %v", first, err)
	}
	now = until.Add(-time.Nanosecond)
	if first, err := m.Spend(ctx, "d1", until); err != nil || first {
		t.Errorf("spending d1 again 1ns before its expiry: %v, %v; want it refused", first, err)
	}
}

// Memory keeps no more than the decisions not yet expired.
func TestMemoryForgets(t *testing.T) {
	now := time.Date(2026, 11, 27, 9, 0, 0, 0, time.UTC)
	m := NewMemory(func() time.Time { return now })
	for i := range 1000 {
		m.Spend(context.Background(), fmt.Sprint(i), now.Add(30*time.Second))
	}
	now = now.Add(31 * time.Second)
	m.Spend(context.Background(), "last", now.Add(30*time.Second))
	if len(m.until) != 1 || len(m.queue)-m.head != 1 {
		t.Errorf("%d ids and %d queued kept, want only the last", len(m.until), len(m.queue)-m.head)
	}
}

// BenchmarkMemorySpend spends decisions as a busy broker does, each
// expiring 30 s after it is spent, on a clock that moves 50 µs a spending
// (20,000 a second): its cost must not grow with how many are kept.
func BenchmarkMemorySpend(b *testing.B) {
	now := time.Date(2026, 11, 27, 9, 0, 0, 0, time.UTC)
	m := NewMemory(func() time.Time { return now })
	ctx := context.Background()
	i := 0
	for b.Loop() {
		now = now.Add(50 * time.Microsecond)
		m.Spend(ctx, strconv.Itoa(i), now.Add(30*time.Second))
		i++
	}
}

// BenchmarkRedisSpend is what the ledger adds to each call when replicas
// share a Redis: one script (a GET and a SET NX with an expiry), a round
// trip on loopback here.
// Compare BenchmarkRedisAllow in internal/ratelimit, the rate limiter's
// round trip on the same path.
func BenchmarkRedisSpend(b *testing.B) {
	srv := redistest.Start(b)
	l := NewRedis(srv.Client())
	ctx := context.Background()
	if err := l.Begin(ctx); err != nil {
		b.Fatal(err)
	}
	i := 0
	b.ReportAllocs()
	for b.Loop() {
		if first, err := l.Spend(ctx, strconv.Itoa(i), time.Now().Add(30*time.Second)); err != nil || !first {
			b.Fatalf("spending %d: first %v, %v", i, first, err)
		}
		i++
	}
}
