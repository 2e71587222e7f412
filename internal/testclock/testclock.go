// Package testclock is a clock that tests set and move by hand, for code
// that reads the time through an injected func() time.Time: tests move it
// instead of sleeping. It is safe for concurrent use, as the code under
// test often reads it from other goroutines.
package testclock

import (
	"sync"
	"time"
)

// Clock is a settable time source.
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// New returns a clock that reads t until moved.
func New(t time.Time) *Clock { return &Clock{t: t} }

// Now is the clock's time; pass the method value as a clock.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Advance moves the clock by d, which may be negative.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}
