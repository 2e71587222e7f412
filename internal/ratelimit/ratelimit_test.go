package ratelimit

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/amgateway/amg/internal/policy"
)

// clock is a manual clock for tests.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type limiter interface {
	Allow(ctx context.Context, key string, l *policy.RateLimit) (Result, error)
}

// testLimiter is the contract every Limiter implementation passes.
func testLimiter(t *testing.T, newLimiter func(t *testing.T, now func() time.Time) limiter) {
	ctx := context.Background()
	t.Run("burst then steady rate", func(t *testing.T) {
		c := &clock{t: time.Unix(1_700_000_000, 0)}
		lim := newLimiter(t, c.Now)
		l := &policy.RateLimit{ID: "r/rate_limits[0]", Requests: 60, Per: time.Minute, Burst: 3}
		for i := range 3 {
			res, err := lim.Allow(ctx, "k", l)
			if err != nil || !res.Allowed || res.Remaining != 2-i {
				t.Fatalf("call %d: %+v %v, want allowed with %d remaining", i, res, err, 2-i)
			}
		}
		res, err := lim.Allow(ctx, "k", l)
		if err != nil || res.Allowed || res.RetryAfter != time.Second {
			t.Fatalf("4th call: %+v %v, want denied, retry after 1s", res, err)
		}
		c.Advance(999 * time.Millisecond)
		if res, _ := lim.Allow(ctx, "k", l); res.Allowed || res.RetryAfter != time.Millisecond {
			t.Fatalf("after 999ms: %+v, want denied, retry after 1ms", res)
		}
		c.Advance(time.Millisecond)
		if res, _ := lim.Allow(ctx, "k", l); !res.Allowed {
			t.Fatalf("after 1s: %+v, want allowed", res)
		}
		c.Advance(10 * time.Minute)
		for i := range 3 {
			if res, _ := lim.Allow(ctx, "k", l); !res.Allowed {
				t.Fatalf("after a long pause, call %d denied; the burst must refill", i)
			}
		}
	})
	t.Run("keys are independent", func(t *testing.T) {
		c := &clock{t: time.Unix(1_700_000_000, 0)}
		lim := newLimiter(t, c.Now)
		l := &policy.RateLimit{ID: "x", Requests: 1, Per: time.Hour, Burst: 1}
		for _, k := range []string{"a", "b"} {
			if res, _ := lim.Allow(ctx, k, l); !res.Allowed {
				t.Fatalf("first call for %s denied", k)
			}
		}
		if res, _ := lim.Allow(ctx, "a", l); res.Allowed {
			t.Fatal("second call for a allowed")
		}
	})
	t.Run("concurrent callers never exceed the burst", func(t *testing.T) {
		c := &clock{t: time.Unix(1_700_000_000, 0)}
		lim := newLimiter(t, c.Now)
		l := &policy.RateLimit{ID: "y", Requests: 10, Per: time.Hour, Burst: 10}
		var wg sync.WaitGroup
		var mu sync.Mutex
		allowed := 0
		for range 8 {
			wg.Go(func() {
				for range 10 {
					res, err := lim.Allow(ctx, "k", l)
					if err != nil {
						t.Error(err)
						return
					}
					if res.Allowed {
						mu.Lock()
						allowed++
						mu.Unlock()
					}
				}
			})
		}
		wg.Wait()
		if allowed != 10 {
			t.Errorf("allowed %d of 80 concurrent calls, want exactly the burst of 10", allowed)
		}
	})
}

func TestMemory(t *testing.T) {
	testLimiter(t, func(_ *testing.T, now func() time.Time) limiter {
		return NewMemory(&MemoryOptions{Now: now})
	})
}

func TestMemoryForgetsFullBudgets(t *testing.T) {
	c := &clock{t: time.Unix(1_700_000_000, 0)}
	m := NewMemory(&MemoryOptions{Now: c.Now})
	l := &policy.RateLimit{ID: "z", Requests: 1, Per: time.Second, Burst: 1}
	for i := range sweepEvery {
		m.Allow(context.Background(), fmt.Sprint(i), l)
		c.Advance(time.Millisecond)
	}
	if n := len(m.tats); n > 1100 {
		t.Errorf("%d keys kept after a sweep, want only those still limited", n)
	}
}

func BenchmarkMemoryAllow(b *testing.B) {
	m := NewMemory(nil)
	l := &policy.RateLimit{ID: "b", Requests: 1_000_000_000, Per: time.Second, Burst: 1_000_000}
	b.ReportAllocs()
	for b.Loop() {
		m.Allow(context.Background(), "agent-1", l)
	}
}
