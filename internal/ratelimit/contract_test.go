package ratelimit

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/amgateway/amg/internal/policy"
	"github.com/amgateway/amg/internal/testclock"
)

type limiter interface {
	Allow(ctx context.Context, key string, l *policy.RateLimit) (Result, error)
	AllowAll(ctx context.Context, spends []Spend) (Result, int, error)
}

// testLimiter is the contract every Limiter implementation passes.
// newLimiter returns a limiter reading time from now and sharing no state
// with any other it returned, so the expected results below are exact:
// every implementation must do the same arithmetic.
func testLimiter(t *testing.T, newLimiter func(t *testing.T, now func() time.Time) limiter) {
	ctx := context.Background()
	t.Run("burst then steady rate", func(t *testing.T) {
		c := testclock.New(time.Unix(1_700_000_000, 0))
		lim := newLimiter(t, c.Now)
		l := &policy.RateLimit{ID: "r/rate_limits[0]", Requests: 60, Per: time.Minute, Burst: 3}
		for i := range 3 {
			res, err := lim.Allow(ctx, "k", l)
			if err != nil || res != (Result{Allowed: true, Remaining: 2 - i}) {
				t.Fatalf("call %d: %+v %v, want allowed with %d remaining", i, res, err, 2-i)
			}
		}
		res, err := lim.Allow(ctx, "k", l)
		if err != nil || res != (Result{RetryAfter: time.Second}) {
			t.Fatalf("4th call: %+v %v, want denied, retry after 1s", res, err)
		}
		c.Advance(999 * time.Millisecond)
		if res, err := lim.Allow(ctx, "k", l); err != nil || res != (Result{RetryAfter: time.Millisecond}) {
			t.Fatalf("after 999ms: %+v %v, want denied, retry after 1ms", res, err)
		}
		c.Advance(time.Millisecond)
		if res, err := lim.Allow(ctx, "k", l); err != nil || res != (Result{Allowed: true}) {
			t.Fatalf("after 1s: %+v %v, want allowed with 0 remaining", res, err)
		}
		// Half an interval later the next call is still half an interval
		// away: a denial spends nothing.
		c.Advance(500 * time.Millisecond)
		for range 2 {
			if res, err := lim.Allow(ctx, "k", l); err != nil || res != (Result{RetryAfter: 500 * time.Millisecond}) {
				t.Fatalf("after 1.5s: %+v %v, want denied, retry after 500ms", res, err)
			}
		}
		c.Advance(10 * time.Minute)
		for i := range 3 {
			if res, err := lim.Allow(ctx, "k", l); err != nil || res != (Result{Allowed: true, Remaining: 2 - i}) {
				t.Fatalf("after a long pause, call %d: %+v %v; the burst must refill", i, res, err)
			}
		}
	})
	t.Run("partial refill", func(t *testing.T) {
		c := testclock.New(time.Unix(1_700_000_000, 0))
		lim := newLimiter(t, c.Now)
		l := &policy.RateLimit{ID: "p", Requests: 10, Per: 10 * time.Second, Burst: 5}
		for range 5 {
			if res, err := lim.Allow(ctx, "k", l); err != nil || !res.Allowed {
				t.Fatalf("burst call: %+v %v", res, err)
			}
		}
		// Two and a half intervals refill two calls.
		c.Advance(2500 * time.Millisecond)
		for i, want := range []Result{{Allowed: true, Remaining: 1}, {Allowed: true}, {RetryAfter: 500 * time.Millisecond}} {
			if res, err := lim.Allow(ctx, "k", l); err != nil || res != want {
				t.Fatalf("call %d after 2.5s: %+v %v, want %+v", i, res, err, want)
			}
		}
	})
	t.Run("a period holds burst + requests - 1 calls", func(t *testing.T) {
		// A limit is a rate: after a quiet spell its burst goes at once,
		// and one call every interval after, so the minute from the first
		// call holds the burst and 59 more. The README says so.
		for _, tt := range []struct {
			name        string
			burst, want int
		}{{"burst 1", 1, 60}, {"burst 10", 10, 69}, {"default burst", 60, 119}} {
			t.Run(tt.name, func(t *testing.T) {
				c := testclock.New(time.Unix(1_700_000_000, 0))
				lim := newLimiter(t, c.Now)
				l := &policy.RateLimit{ID: "m", Requests: 60, Per: time.Minute, Burst: tt.burst}
				allowed := 0
				for elapsed := time.Duration(0); elapsed < l.Per; elapsed += 100 * time.Millisecond {
					for {
						res, err := lim.Allow(ctx, "k", l)
						if err != nil {
							t.Fatal(err)
						}
						if !res.Allowed {
							break
						}
						allowed++
					}
					c.Advance(100 * time.Millisecond)
				}
				if allowed != tt.want {
					t.Errorf("60 per 1m, burst %d: %d calls allowed in a minute, want %d", tt.burst, allowed, tt.want)
				}
			})
		}
	})
	t.Run("interval not a whole microsecond", func(t *testing.T) {
		// 1s/3 is 333333333ns, and the clock sits just before a second
		// boundary, so a tat carries into the next second.
		c := testclock.New(time.Unix(1_700_000_000, 999_999_999))
		lim := newLimiter(t, c.Now)
		l := &policy.RateLimit{ID: "f", Requests: 3, Per: time.Second, Burst: 2}
		for i := range 2 {
			if res, err := lim.Allow(ctx, "k", l); err != nil || res != (Result{Allowed: true, Remaining: 1 - i}) {
				t.Fatalf("call %d: %+v %v", i, res, err)
			}
		}
		if res, err := lim.Allow(ctx, "k", l); err != nil || res != (Result{RetryAfter: 333_333_333}) {
			t.Fatalf("3rd call: %+v %v, want retry after 333333333ns", res, err)
		}
		c.Advance(333_333_332)
		if res, err := lim.Allow(ctx, "k", l); err != nil || res != (Result{RetryAfter: 1}) {
			t.Fatalf("1ns early: %+v %v, want retry after 1ns", res, err)
		}
		c.Advance(1)
		if res, err := lim.Allow(ctx, "k", l); err != nil || res != (Result{Allowed: true}) {
			t.Fatalf("on time: %+v %v, want allowed", res, err)
		}
	})
	t.Run("a limit that is no rate is an error", func(t *testing.T) {
		c := testclock.New(time.Unix(1_700_000_000, 0))
		lim := newLimiter(t, c.Now)
		for _, l := range []*policy.RateLimit{
			{ID: "no requests", Requests: 0, Per: time.Second, Burst: 1},
			{ID: "no period", Requests: 1, Per: 0, Burst: 1},
			{ID: "no burst", Requests: 1, Per: time.Second, Burst: 0},
			// Per/Requests rounds down to no interval at all.
			{ID: "under a nanosecond apart", Requests: 2000, Per: time.Microsecond, Burst: 1},
			// Burst intervals overflow a time.Duration.
			{ID: "burst beyond 292 years", Requests: 1, Per: time.Hour, Burst: 1 << 40},
		} {
			if res, err := lim.Allow(ctx, "k", l); err == nil || res.Allowed {
				t.Errorf("%s: %+v %v, want an error", l.ID, res, err)
			}
		}
	})
	t.Run("keys are independent", func(t *testing.T) {
		c := testclock.New(time.Unix(1_700_000_000, 0))
		lim := newLimiter(t, c.Now)
		l := &policy.RateLimit{ID: "x", Requests: 1, Per: time.Hour, Burst: 1}
		for _, k := range []string{"a", "b", "rate_limits[0]|agent:with spaces"} {
			if res, err := lim.Allow(ctx, k, l); err != nil || res != (Result{Allowed: true}) {
				t.Fatalf("first call for %s: %+v %v", k, res, err)
			}
		}
		if res, _ := lim.Allow(ctx, "a", l); res.Allowed || res.RetryAfter != time.Hour {
			t.Fatalf("second call for a: %+v, want denied, retry after 1h", res)
		}
	})
	t.Run("a call spends all its limits or none", func(t *testing.T) {
		c := testclock.New(time.Unix(1_700_000_000, 0))
		lim := newLimiter(t, c.Now)
		own := &policy.RateLimit{ID: "own", Requests: 1, Per: time.Hour, Burst: 1}
		shared := &policy.RateLimit{ID: "shared", Requests: 3, Per: time.Hour, Burst: 3}
		call := []Spend{{"shared|role", shared}, {"own|a", own}}
		if res, i, err := lim.AllowAll(ctx, call); err != nil || res != (Result{Allowed: true}) || i != -1 {
			t.Fatalf("first call: %+v %d %v, want allowed with the fewest remaining, 0", res, i, err)
		}
		// Refused by its own limit, second: the shared one keeps its budget.
		for range 3 {
			if res, i, err := lim.AllowAll(ctx, call); err != nil || res != (Result{RetryAfter: time.Hour}) || i != 1 {
				t.Fatalf("call over its own limit: %+v %d %v, want spend 1 refused, retry after 1h", res, i, err)
			}
		}
		for i := range 2 {
			if res, err := lim.Allow(ctx, "shared|role", shared); err != nil || res != (Result{Allowed: true, Remaining: 1 - i}) {
				t.Fatalf("shared limit, call %d: %+v %v; refused calls spent it", i, res, err)
			}
		}
		if res, i, err := lim.AllowAll(ctx, []Spend{{"own|b", own}, {"shared|role", shared}}); err != nil || res != (Result{RetryAfter: 20 * time.Minute}) || i != 1 {
			t.Fatalf("shared limit spent: %+v %d %v, want spend 1 refused, retry after 20m", res, i, err)
		}
		if res, err := lim.Allow(ctx, "own|b", own); err != nil || res != (Result{Allowed: true}) {
			t.Fatalf("own|b after its call was refused: %+v %v, want allowed", res, err)
		}
	})
	t.Run("a refusal waits for every limit", func(t *testing.T) {
		// The call is told to wait until all its limits allow it, not
		// just the first that refused, and the spend named is the one
		// that waits longest.
		c := testclock.New(time.Unix(1_700_000_000, 0))
		lim := newLimiter(t, c.Now)
		role := &policy.RateLimit{ID: "role", Requests: 1, Per: time.Second, Burst: 1}
		own := &policy.RateLimit{ID: "own", Requests: 1, Per: time.Hour, Burst: 1}
		call := []Spend{{"role|a", role}, {"own|a", own}}
		if res, i, err := lim.AllowAll(ctx, call); err != nil || res != (Result{Allowed: true}) || i != -1 {
			t.Fatalf("first call: %+v %d %v", res, i, err)
		}
		res, i, err := lim.AllowAll(ctx, call)
		if err != nil || res != (Result{RetryAfter: time.Hour}) || i != 1 {
			t.Fatalf("second call: %+v %d %v, want spend 1 refused, retry after 1h", res, i, err)
		}
		c.Advance(res.RetryAfter - time.Nanosecond)
		if res, i, err := lim.AllowAll(ctx, call); err != nil || res != (Result{RetryAfter: time.Nanosecond}) || i != 1 {
			t.Fatalf("1ns early: %+v %d %v, want spend 1 refused, retry after 1ns", res, i, err)
		}
		c.Advance(time.Nanosecond)
		if res, i, err := lim.AllowAll(ctx, call); err != nil || res != (Result{Allowed: true}) || i != -1 {
			t.Errorf("told to retry after %v; after waiting that long: %+v %d %v", time.Hour, res, i, err)
		}
		// A key spent twice waits for its second spend.
		l := &policy.RateLimit{ID: "t", Requests: 1, Per: time.Minute, Burst: 1}
		if res, i, err := lim.AllowAll(ctx, []Spend{{"k", l}, {"k", l}}); err != nil || res != (Result{RetryAfter: time.Minute}) || i != 1 {
			t.Errorf("two spends of a burst of one: %+v %d %v, want spend 1 refused, retry after 1m", res, i, err)
		}
	})
	t.Run("a key spent twice counts twice", func(t *testing.T) {
		c := testclock.New(time.Unix(1_700_000_000, 0))
		lim := newLimiter(t, c.Now)
		l := &policy.RateLimit{ID: "t", Requests: 1, Per: time.Hour, Burst: 2}
		if res, i, err := lim.AllowAll(ctx, []Spend{{"k", l}, {"k", l}}); err != nil || res != (Result{Allowed: true}) || i != -1 {
			t.Fatalf("two spends of a burst of two: %+v %d %v, want allowed, 0 remaining", res, i, err)
		}
		if res, i, err := lim.AllowAll(ctx, []Spend{{"j", l}, {"j", l}, {"j", l}}); err != nil || res != (Result{RetryAfter: time.Hour}) || i != 2 {
			t.Fatalf("three spends of a burst of two: %+v %d %v, want spend 2 refused", res, i, err)
		}
		for i := range 2 {
			if res, err := lim.Allow(ctx, "j", l); err != nil || res != (Result{Allowed: true, Remaining: 1 - i}) {
				t.Fatalf("j after the refusal, call %d: %+v %v; the refused spends spent", i, res, err)
			}
		}
		if res, err := lim.Allow(ctx, "k", l); err != nil || res.Allowed {
			t.Fatalf("k after two spends: %+v %v, want refused", res, err)
		}
	})
	t.Run("a limit that is no rate spends nothing", func(t *testing.T) {
		c := testclock.New(time.Unix(1_700_000_000, 0))
		lim := newLimiter(t, c.Now)
		l := &policy.RateLimit{ID: "ok", Requests: 1, Per: time.Hour, Burst: 1}
		bad := &policy.RateLimit{ID: "bad", Requests: 0, Per: time.Hour, Burst: 1}
		if res, _, err := lim.AllowAll(ctx, []Spend{{"k", l}, {"b", bad}}); err == nil || res.Allowed {
			t.Fatalf("%+v %v, want an error", res, err)
		}
		if res, err := lim.Allow(ctx, "k", l); err != nil || res != (Result{Allowed: true}) {
			t.Fatalf("k after the error: %+v %v, want allowed", res, err)
		}
	})
	t.Run("concurrent callers never exceed the burst", func(t *testing.T) {
		c := testclock.New(time.Unix(1_700_000_000, 0))
		lim := newLimiter(t, c.Now)
		l := &policy.RateLimit{ID: "y", Requests: 10, Per: time.Hour, Burst: 10}
		allowed := countAllowed(t, 8, 10, func(int) (Result, error) { return lim.Allow(ctx, "k", l) })
		if allowed != 10 {
			t.Errorf("allowed %d of 80 concurrent calls, want exactly the burst of 10", allowed)
		}
	})
	t.Run("concurrent calls spend all or none", func(t *testing.T) {
		c := testclock.New(time.Unix(1_700_000_000, 0))
		lim := newLimiter(t, c.Now)
		shared := &policy.RateLimit{ID: "shared", Requests: 10, Per: time.Hour, Burst: 10}
		own := &policy.RateLimit{ID: "own", Requests: 2, Per: time.Hour, Burst: 2}
		// Each of 8 agents tries 10 calls, each spending its own limit of 2
		// and a shared one of 10: at most 2 calls per agent go through, 10
		// in all, and the calls their own limit refused leave the shared
		// budget to the others.
		allowed := countAllowed(t, 8, 10, func(agent int) (Result, error) {
			res, _, err := lim.AllowAll(ctx, []Spend{{"shared", shared}, {"own|" + string(rune('a'+agent)), own}})
			return res, err
		})
		if allowed != 10 {
			t.Errorf("allowed %d calls, want the shared burst of 10", allowed)
		}
	})
}

// countAllowed has each of workers goroutines make calls calls of call at
// once, and counts those allowed.
func countAllowed(t *testing.T, workers, calls int, call func(worker int) (Result, error)) int {
	t.Helper()
	var wg sync.WaitGroup
	var mu sync.Mutex
	allowed := 0
	for w := range workers {
		wg.Go(func() {
			for range calls {
				res, err := call(w)
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
	return allowed
}
