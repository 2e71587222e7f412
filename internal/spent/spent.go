// Package spent remembers the decisions the broker has served, so that it
// serves each once: a decision token captured on its way from Envoy to
// the broker cannot be replayed while it is still fresh, to run a call
// again past the rate limits, a revocation or a policy change.
//
// Memory serves one replica; Redis, replicas that share it, so that a
// token spent on one is refused by all.
package spent

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Ledger records spent decisions. Implementations are safe for
// concurrent use.
type Ledger interface {
	// Spend records decision id as spent until it expires, at until, and
	// reports whether it is its first spending.
	Spend(ctx context.Context, id string, until time.Time) (bool, error)
}

// Memory is a Ledger for one process. It keeps each id until its expiry,
// and no longer.
type Memory struct {
	mu    sync.Mutex
	until map[string]time.Time
	queue []spending // in the order spent, which is nearly that of expiry
	head  int        // queue[:head] are forgotten
	now   func() time.Time
}

type spending struct {
	id    string
	until time.Time
}

// NewMemory returns an empty Memory on the clock now (nil: time.Now).
func NewMemory(now func() time.Time) *Memory {
	if now == nil {
		now = time.Now
	}
	return &Memory{until: map[string]time.Time{}, now: now}
}

// Spend implements Ledger.
func (m *Memory) Spend(_ context.Context, id string, until time.Time) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	m.forget(now)
	if exp, ok := m.until[id]; ok && now.Before(exp) {
		return false, nil
	}
	m.until[id] = until
	m.queue = append(m.queue, spending{id, until})
	return true, nil
}

// forget drops the ids expired at now from the front of the queue. An id
// spent after a later one, with an earlier expiry, waits behind it: its
// entry lives a little longer than it must, never less.
func (m *Memory) forget(now time.Time) {
	for m.head < len(m.queue) && !now.Before(m.queue[m.head].until) {
		s := m.queue[m.head]
		if m.until[s.id].Equal(s.until) {
			delete(m.until, s.id)
		}
		m.queue[m.head] = spending{}
		m.head++
	}
	// The forgotten front is let go once it is half the queue, so that
	// each spending is copied a bounded number of times.
	if m.head > 0 && m.head >= len(m.queue)/2 {
		m.queue = append(m.queue[:0], m.queue[m.head:]...)
		m.head = 0
	}
}

// Redis is a Ledger in the Redis the replicas share: one key per spent
// decision, which Redis drops when the decision expires. The key holds a
// random nonce of the spending that set it: go-redis sends a command
// again when its reply is late (a read timeout, a dropped connection),
// and a spending sent twice must find its own entry, not report a
// replay.
type Redis struct {
	client redis.UniversalClient
}

// NewRedis returns the Ledger in client's Redis.
func NewRedis(client redis.UniversalClient) *Redis { return &Redis{client: client} }

// keyPrefix starts the key of a spent decision id.
const keyPrefix = "amg:{decisions}:"

// clockMargin is how much longer than its decision a spent decision's
// key lives in Redis. The key's lifetime is reckoned on the clock of the
// replica that spent the decision, and the decision's expiry checked on
// the clock of each replica presented with it: without a margin, a
// replica whose clock is behind would take a replay while the key had
// already gone.
const clockMargin = 2 * time.Second

// Spend implements Ledger.
func (r *Redis) Spend(ctx context.Context, id string, until time.Time) (bool, error) {
	ttl := time.Until(until) + clockMargin
	nonce := rand.Text()
	old, err := r.client.SetArgs(ctx, keyPrefix+id, nonce, redis.SetArgs{Mode: "NX", TTL: ttl, Get: true}).Result()
	if errors.Is(err, redis.Nil) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("spend decision: %w", err)
	}
	return old == nonce, nil
}
