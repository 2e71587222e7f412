// Package ratelimit enforces the rate limits of a policy with the generic
// cell rate algorithm (GCRA): one timestamp per key, no background work,
// and the same arithmetic in memory and in Redis.
package ratelimit

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/amgateway/amg/internal/policy"
)

// Result is the outcome of one Allow.
type Result struct {
	Allowed bool
	// RetryAfter is how long to wait before a call would be allowed; zero
	// when allowed.
	RetryAfter time.Duration
	// Remaining is how many more calls would be allowed right now.
	Remaining int
}

// Spend is one call to count against limit Limit under Key.
type Spend struct {
	Key   string
	Limit *policy.RateLimit
}

// emission is l.Emission, the arithmetic both limiters do, with errors
// naming the limit.
func emission(l *policy.RateLimit) (interval, burst time.Duration, err error) {
	interval, burst, err = l.Emission()
	if err != nil {
		return 0, 0, fmt.Errorf("rate limit %s: %w", l.ID, err)
	}
	return interval, burst, nil
}

// gcra applies one request at now to the theoretical arrival time tat and
// returns the result and the tat the request leaves once spent, which a
// denied request is not.
func gcra(tat, now time.Time, interval, burst time.Duration) (Result, time.Time) {
	if tat.Before(now) {
		tat = now
	}
	next := tat.Add(interval)
	allowAt := next.Add(-burst)
	if now.Before(allowAt) {
		return Result{RetryAfter: allowAt.Sub(now)}, next
	}
	remaining := int(now.Sub(allowAt) / interval)
	return Result{Allowed: true, Remaining: remaining}, next
}

// Memory is a Limiter for one process (standalone mode).
type Memory struct {
	now func() time.Time

	mu    sync.Mutex
	tats  map[string]time.Time
	calls int
}

// MemoryOptions tune a Memory limiter; nil means defaults.
type MemoryOptions struct {
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// NewMemory returns an in-memory limiter.
func NewMemory(opts *MemoryOptions) *Memory {
	m := &Memory{now: time.Now, tats: map[string]time.Time{}}
	if opts != nil && opts.Now != nil {
		m.now = opts.Now
	}
	return m
}

// sweepEvery bounds memory: every so many calls, keys whose budget is
// full again (tat in the past) are forgotten, which changes nothing.
const sweepEvery = 4096

// Allow counts one call against limit l for key.
func (m *Memory) Allow(ctx context.Context, key string, l *policy.RateLimit) (Result, error) {
	res, _, err := m.AllowAll(ctx, []Spend{{Key: key, Limit: l}})
	return res, err
}

// AllowAll counts one call against each of spends, all or none. They are
// taken in order, each as if those before it were spent (a key may come
// more than once, and each time counts). When a limit refuses one, none
// is spent: AllowAll returns a refusal whose RetryAfter is the longest
// any of them must wait, so that a call retried then is allowed by all
// its limits, and the index of the spend that waits longest (the first
// of those that wait as long). Otherwise every spend is taken, and
// AllowAll returns an allowed Result whose Remaining is the fewest any of
// them left, and an index of -1. A limit that is no rate is an error, and
// nothing is spent.
func (m *Memory) AllowAll(_ context.Context, spends []Spend) (Result, int, error) {
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	var (
		buf  [4]time.Time
		next = buf[:0] // next[i]: the tat spend i leaves, stored once all are allowed
		// latest spend of each key so far; a short list is searched instead
		latest map[string]int
	)
	if len(spends) > 16 {
		latest = make(map[string]int, len(spends))
	}
	all, refused := Result{Allowed: true}, -1
	for i, sp := range spends {
		interval, burst, err := emission(sp.Limit)
		if err != nil {
			return Result{}, -1, err
		}
		tat := m.tats[sp.Key]
		if j := earlier(spends, i, latest); j >= 0 {
			tat = next[j]
		}
		res, t := gcra(tat, now, interval, burst)
		next = append(next, t)
		switch {
		case !res.Allowed:
			// The rest only tell how long the call must wait.
			if refused < 0 || res.RetryAfter > all.RetryAfter {
				all, refused = res, i
			}
		case refused < 0 && (i == 0 || res.Remaining < all.Remaining):
			all.Remaining = res.Remaining
		}
	}
	if refused >= 0 {
		return all, refused, nil
	}
	for i, sp := range spends {
		m.tats[sp.Key] = next[i]
	}
	if m.calls++; m.calls%sweepEvery == 0 {
		for k, t := range m.tats {
			if t.Before(now) {
				delete(m.tats, k)
			}
		}
	}
	return all, -1, nil
}

// earlier returns the index of the latest spend before i of spends[i]'s
// key, or -1, and notes i in latest when it is not nil.
func earlier(spends []Spend, i int, latest map[string]int) int {
	key := spends[i].Key
	if latest != nil {
		j, ok := latest[key]
		latest[key] = i
		if !ok {
			return -1
		}
		return j
	}
	for j := i - 1; j >= 0; j-- {
		if spends[j].Key == key {
			return j
		}
	}
	return -1
}
