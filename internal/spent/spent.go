// Package spent remembers the decisions the broker has served, so that it
// serves each once: a decision token captured on its way from Envoy to
// the broker cannot be replayed while it is still fresh, to run a call
// again past the rate limits, a revocation or a policy change.
//
// Memory serves one replica; Redis, replicas that share it, so that a
// token spent on one is refused by all.
//
// A ledger answers only for the decisions made since it began: one that
// lost what it knew (a Redis restarted without persistence, or failed
// over to a replica that lagged) cannot tell a replay of an older one,
// so it refuses every decision made before it began anew, for at most one
// decision lifetime.
package spent

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/amgateway/amg/authz"
)

// Ledger records spent decisions. Implementations are safe for
// concurrent use.
type Ledger interface {
	// Spend records decision id as spent until it expires, at until, and
	// reports whether it is its first spending.
	// ErrBefore if the decision was made before the ledger began.
	Spend(ctx context.Context, id string, until time.Time) (bool, error)
}

// ErrBefore is Spend's error for a decision made before the ledger began:
// whether it was spent is not known.
var ErrBefore = errors.New("the decision was made before the ledger of spent decisions began (its store lost what it held), so it may have been served")

// lifetime is how long before its expiry a decision is made.
const lifetime = authz.DefaultDecisionTTL

// madeBefore reports whether a decision expiring at until was made before
// since. The expiry is on the clock of the replica that made the
// decision, and with Redis since is on Redis's: clocks are taken to agree
// to much better than a decision's lifetime, and a replica whose clock
// runs ahead by d has a decision it made in the d before a loss taken as
// made after it.
func madeBefore(until, since time.Time) bool { return until.Before(since.Add(lifetime)) }

// Memory is a Ledger for one process. It keeps each id until its expiry,
// and no longer.
type Memory struct {
	mu    sync.Mutex
	until map[string]time.Time
	queue []spending // in the order spent, which is nearly that of expiry
	head  int        // queue[:head] are forgotten
	now   func() time.Time
	since time.Time // when the ledger began
}

type spending struct {
	id    string
	until time.Time
}

// NewMemory returns an empty Memory on the clock now (nil: time.Now),
// which begins now.
func NewMemory(now func() time.Time) *Memory {
	if now == nil {
		now = time.Now
	}
	// Decision expiries are in milliseconds.
	return &Memory{until: map[string]time.Time{}, now: now, since: now().Truncate(time.Millisecond)}
}

// Spend implements Ledger.
func (m *Memory) Spend(_ context.Context, id string, until time.Time) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	m.forget(now)
	if madeBefore(until, m.since) {
		return false, ErrBefore
	}
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
// replay. A key without expiry holds when the ledger began, on Redis's
// clock: the spending that finds it missing knows Redis lost its data,
// and writes it anew.
type Redis struct {
	client redis.UniversalClient
}

// NewRedis returns the Ledger in client's Redis.
func NewRedis(client redis.UniversalClient) *Redis { return &Redis{client: client} }

// keyPrefix starts the key of a spent decision id; sinceKey, which no id
// can give, holds when the ledger began (Unix milliseconds). Both are in
// one hash slot, for the script that reads one and writes the other.
const (
	keyPrefix = "amg:{decisions}:"
	sinceKey  = "amg:{decisions}.since"
)

// Begin has the ledger begin now if Redis holds none: a replica calls it
// at start, before it decides, so that the first decisions of a new Redis
// are not taken for older than the ledger.
func (r *Redis) Begin(ctx context.Context) error {
	if err := beginScript.Run(ctx, r.client, []string{sinceKey}).Err(); err != nil {
		return fmt.Errorf("begin the ledger of spent decisions: %w", err)
	}
	return nil
}

// since is the part of both scripts that reads when the ledger began,
// writing now if it is missing.
const since = `
local since = redis.call('GET', KEYS[1])
if not since then
  local t = redis.call('TIME')
  since = t[1] .. string.format('%03d', math.floor(t[2] / 1000))
  redis.call('SET', KEYS[1], since)
end
`

var beginScript = redis.NewScript(since + `return since`)

// spendScript spends KEYS[2] with nonce ARGV[1] for ARGV[2] ms, unless
// the decision, expiring at ARGV[3] (Unix ms), was made ARGV[4] ms
// before that, before the ledger began: it returns 1 for a first
// spending, 0 for a replay, -1 for a decision older than the ledger.
var spendScript = redis.NewScript(since + `
if tonumber(ARGV[3]) - tonumber(ARGV[4]) < tonumber(since) then
  return -1
end
local old = redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2], 'GET')
if not old or old == ARGV[1] then
  return 1
end
return 0
`)

// clockMargin is how much longer than its decision a spent decision's
// key lives in Redis. The key's lifetime is reckoned on the clock of the
// replica that spent the decision, and the decision's expiry checked on
// the clock of each replica presented with it: without a margin, a
// replica whose clock is behind would take a replay while the key had
// already gone.
const clockMargin = 2 * time.Second

// Spend implements Ledger.
func (r *Redis) Spend(ctx context.Context, id string, until time.Time) (bool, error) {
	ttl := max(time.Until(until)+clockMargin, time.Millisecond)
	n, err := spendScript.Run(ctx, r.client, []string{sinceKey, keyPrefix + id},
		rand.Text(), ttl.Milliseconds(), until.UnixMilli(), lifetime.Milliseconds()).Int()
	switch {
	case err != nil:
		return false, fmt.Errorf("spend decision: %w", err)
	case n < 0:
		return false, ErrBefore
	}
	return n == 1, nil
}
