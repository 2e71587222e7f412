package testclock

import (
	"sync"
	"testing"
	"time"
)

func TestClock(t *testing.T) {
	start := time.Date(2026, 11, 26, 9, 0, 0, 0, time.UTC)
	c := New(start)
	if got := c.Now(); !got.Equal(start) {
		t.Fatalf("Now = %v, want %v", got, start)
	}
	c.Advance(time.Hour)
	c.Advance(-time.Minute)
	if got, want := c.Now(), start.Add(59*time.Minute); !got.Equal(want) {
		t.Errorf("after moving +1h and -1m, Now = %v, want %v", got, want)
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 100 {
				c.Advance(time.Second)
				c.Now()
			}
		})
	}
	wg.Wait()
	if got, want := c.Now(), start.Add(59*time.Minute+400*time.Second); !got.Equal(want) {
		t.Errorf("after 400 concurrent moves of 1s, Now = %v, want %v", got, want)
	}
}
