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
// returns the result and the new tat (unchanged when denied).
func gcra(tat, now time.Time, interval, burst time.Duration) (Result, time.Time) {
	if tat.Before(now) {
		tat = now
	}
	next := tat.Add(interval)
	allowAt := next.Add(-burst)
	if now.Before(allowAt) {
		return Result{RetryAfter: allowAt.Sub(now)}, tat
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
func (m *Memory) Allow(_ context.Context, key string, l *policy.RateLimit) (Result, error) {
	interval, burst, err := emission(l)
	if err != nil {
		return Result{}, err
	}
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	res, tat := gcra(m.tats[key], now, interval, burst)
	if res.Allowed {
		m.tats[key] = tat
	}
	if m.calls++; m.calls%sweepEvery == 0 {
		for k, t := range m.tats {
			if t.Before(now) {
				delete(m.tats, k)
			}
		}
	}
	return res, nil
}
