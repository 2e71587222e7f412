package ratelimit

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/amgateway/amg/internal/policy"
	"github.com/amgateway/amg/internal/testclock"
)

func TestMemory(t *testing.T) {
	testLimiter(t, func(_ *testing.T, now func() time.Time) limiter {
		return NewMemory(&MemoryOptions{Now: now})
	})
}

func TestMemoryForgetsFullBudgets(t *testing.T) {
	c := testclock.New(time.Unix(1_700_000_000, 0))
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
