package ratelimit

import (
	"context"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/amgateway/amg/internal/policy"
	"github.com/amgateway/amg/internal/redistest"
)

// The contract runs against Redis with the test's clock passed in
// (RedisOptions.Now), so the script's arithmetic is checked to the
// nanosecond against the same expectations as the memory limiter. The
// tests after it use Redis's own clock, as production does, with short
// real durations and no assertion on how long anything took.
func TestRedis(t *testing.T) {
	srv := redistest.Start(t)
	client := srv.Client()
	testLimiter(t, func(t *testing.T, now func() time.Time) limiter {
		return NewRedis(client, &RedisOptions{Prefix: "test:" + t.Name() + ":", Now: now})
	})
}

func TestRedisServerClock(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	client := srv.Client()
	r := NewRedis(client, nil)
	l := &policy.RateLimit{ID: "s", Requests: 2, Per: 200 * time.Millisecond, Burst: 2}

	for i := range 2 {
		if res, err := r.Allow(ctx, "k", l); err != nil || res != (Result{Allowed: true, Remaining: 1 - i}) {
			t.Fatalf("call %d: %+v %v", i, res, err)
		}
	}
	res, err := r.Allow(ctx, "k", l)
	if err != nil || res.Allowed || res.RetryAfter <= 0 || res.RetryAfter > 100*time.Millisecond {
		t.Fatalf("3rd call: %+v %v, want denied, retry after at most one interval", res, err)
	}
	// Redis's clock has moved at least as far as ours after sleeping, so
	// waiting exactly RetryAfter is enough.
	time.Sleep(res.RetryAfter)
	if res, err := r.Allow(ctx, "k", l); err != nil || !res.Allowed {
		t.Fatalf("after waiting RetryAfter: %+v %v, want allowed", res, err)
	}

	// The key expires when its tat passes: by then the budget is full and
	// the key carries nothing.
	key := DefaultRedisPrefix + "k"
	ttl, err := client.PTTL(ctx, key).Result()
	if err != nil || ttl <= 0 || ttl > 200*time.Millisecond {
		t.Fatalf("PTTL = %v %v, want within (0, 200ms]", ttl, err)
	}
	time.Sleep(ttl)
	waitFor(t, "the key to expire", func() bool {
		n, err := client.Exists(ctx, key).Result()
		return err == nil && n == 0
	})
	for i := range 2 {
		if res, err := r.Allow(ctx, "k", l); err != nil || res != (Result{Allowed: true, Remaining: 1 - i}) {
			t.Fatalf("after expiry, call %d: %+v %v, want the whole burst", i, res, err)
		}
	}
}

// Two limiters on two clients stand for two replicas: they spend one
// budget between them.
func TestRedisReplicasShareBudget(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	replicas := []*Redis{NewRedis(srv.Client(), nil), NewRedis(srv.Client(), nil)}
	l := &policy.RateLimit{ID: "shared", Requests: 10, Per: time.Hour, Burst: 10}

	var allowed [2]atomic.Int64
	var wg sync.WaitGroup
	for i, r := range replicas {
		for range 4 {
			wg.Go(func() {
				for range 10 {
					res, err := r.Allow(ctx, "shared|ci-bot", l)
					if err != nil {
						t.Error(err)
						return
					}
					if res.Allowed {
						allowed[i].Add(1)
					}
				}
			})
		}
	}
	wg.Wait()
	a, b := allowed[0].Load(), allowed[1].Load()
	if a+b != 10 {
		t.Errorf("replicas allowed %d + %d of 80 calls, want 10 in total", a, b)
	}
	// Either replica sees the other's spending.
	for i, r := range replicas {
		if res, err := r.Allow(ctx, "shared|ci-bot", l); err != nil || res.Allowed {
			t.Errorf("replica %d after the budget is spent: %+v %v, want denied", i, res, err)
		}
	}
}

func TestRedisPrefix(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	client := srv.Client()
	l := &policy.RateLimit{ID: "x", Requests: 1, Per: time.Hour, Burst: 1}
	a := NewRedis(client, &RedisOptions{Prefix: "a:"})
	b := NewRedis(client, &RedisOptions{Prefix: "b:"})
	for _, r := range []*Redis{a, b} {
		if res, err := r.Allow(ctx, "k", l); err != nil || !res.Allowed {
			t.Fatalf("first call under a new prefix: %+v %v", res, err)
		}
	}
	keys, err := client.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(keys, "a:k") || !slices.Contains(keys, "b:k") || slices.ContainsFunc(keys, func(k string) bool {
		return !strings.HasPrefix(k, "a:") && !strings.HasPrefix(k, "b:")
	}) {
		t.Errorf("keys = %q, want a:k and b:k, and none outside the prefixes", keys)
	}
}

// A script whose reply comes too late is sent again by go-redis, though
// Redis ran it: the call is counted once, and the next is allowed.
func TestRedisLateReplySpendsOnce(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	p := srv.Proxy()
	r := NewRedis(p.Client(), nil)
	l := &policy.RateLimit{ID: "late", Requests: 2, Per: time.Hour, Burst: 2}
	if _, err := r.Allow(ctx, "warm", l); err != nil { // Redis has the script
		t.Fatal(err)
	}
	p.DelayReply("late-agent", 2*redistest.ProxyReadTimeout)
	for i := range 2 {
		if res, err := r.Allow(ctx, "late|late-agent", l); err != nil || res != (Result{Allowed: true, Remaining: 1 - i}) {
			t.Errorf("call %d of a limit of 2, the first of which was answered late: %+v %v, want allowed with %d left", i+1, res, err, 1-i)
		}
	}
	if res, err := r.Allow(ctx, "late|late-agent", l); err != nil || res.Allowed {
		t.Errorf("3rd call: %+v %v, want refused", res, err)
	}
}

// Redis down is an error, which authz turns into a denial; Redis back is
// service again, even though the restarted server has lost the script.
func TestRedisDown(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	r := NewRedis(srv.Client(), nil)
	l := &policy.RateLimit{ID: "d", Requests: 100, Per: time.Second, Burst: 100}
	if _, err := r.Allow(ctx, "k", l); err != nil {
		t.Fatal(err)
	}

	srv.Stop()
	res, err := r.Allow(ctx, "k", l)
	if err == nil {
		t.Fatalf("Allow with Redis stopped = %+v, nil; want an error", res)
	}
	if res.Allowed {
		t.Errorf("Allow with Redis stopped reported allowed: %+v", res)
	}
	t.Logf("error while down: %v", err)

	srv.Restart()
	waitFor(t, "Allow to work after a restart", func() bool {
		res, err := r.Allow(ctx, "k", l)
		return err == nil && res.Allowed
	})
}

func TestRedisErrors(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	client := srv.Client()
	r := NewRedis(client, nil)
	// A key of another type (a misconfigured prefix shared with other
	// data) is an error, not an allowance.
	if err := client.HSet(ctx, DefaultRedisPrefix+"h", "f", "v").Err(); err != nil {
		t.Fatal(err)
	}
	l := &policy.RateLimit{ID: "t", Requests: 1, Per: time.Second, Burst: 1}
	res, err := r.Allow(ctx, "h", l)
	if err == nil || res.Allowed {
		t.Errorf("Allow on a hash key = %+v %v, want an error", res, err)
	}
}

// BenchmarkRedisAllow measures one Allow against a local redis-server: a
// round trip plus the script.
func BenchmarkRedisAllow(b *testing.B) {
	srv := redistest.Start(b)
	r := NewRedis(srv.Client(), nil)
	l := &policy.RateLimit{ID: "b", Requests: 1_000_000_000, Per: time.Second, Burst: 1_000_000}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Allow(ctx, "agent-1", l); err != nil {
			b.Fatal(err)
		}
	}
}

// waitFor polls cond until it holds, failing the test after a generous
// bound so a broken implementation hangs no one.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
