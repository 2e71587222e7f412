package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/amgateway/amg/internal/policy"
)

// DefaultRedisPrefix starts every key a Redis limiter writes unless
// RedisOptions.Prefix says otherwise.
const DefaultRedisPrefix = "amg:ratelimit:"

// Redis is a Limiter shared by every AMG replica that uses the same Redis,
// so a limit is one budget for the whole deployment rather than one per
// replica.
//
// Each Allow is one script run atomically by Redis: read the key's
// theoretical arrival time (tat), apply GCRA, write the new tat. Atomicity
// is what keeps concurrent replicas from both spending the last unit of a
// budget. The clock is Redis's own (TIME, read inside the script), so
// replicas whose clocks disagree still agree on every budget.
//
// A key lives only until its tat has passed, when its budget is full again
// and the key means nothing; Redis expires it, so idle keys cost nothing.
//
// Any Redis failure is returned as an error and never as "allowed": the
// caller (authz) denies the request, failing closed.
type Redis struct {
	client redis.UniversalClient
	prefix string
	now    func() time.Time
}

// RedisOptions tune a Redis limiter; nil means defaults.
type RedisOptions struct {
	// Prefix starts every key; "" means DefaultRedisPrefix. Replicas
	// that share budgets must use the same prefix.
	Prefix string
	// Now overrides the Redis server's clock with a local one. It exists
	// so tests can move time by hand and check the same arithmetic as the
	// memory limiter exactly; leave it nil in production, where replicas
	// must share one clock. Key expiry still follows Redis's real clock,
	// so with Now set a key can outlive (never undercut) its tat when the
	// clock moves slower than real time.
	Now func() time.Time
}

// NewRedis returns a limiter keeping its state in client, which may be a
// single server, a failover or a cluster client: each Allow touches one
// key.
func NewRedis(client redis.UniversalClient, opts *RedisOptions) *Redis {
	r := &Redis{client: client, prefix: DefaultRedisPrefix}
	if opts != nil {
		if opts.Prefix != "" {
			r.prefix = opts.Prefix
		}
		r.now = opts.Now
	}
	return r
}

// gcraScript is gcra in ratelimit.go, in Lua.
//
// Redis's Lua numbers are doubles, exact for integers below 2^53, but a
// time in nanoseconds since the epoch is about 2^61. So absolute times are
// never held in one number: the tat is stored as the decimal string of its
// nanoseconds since the epoch (readable with redis-cli), split into seconds
// and nanoseconds when read, and all arithmetic is on offsets from now,
// which are exact while a limit's burst spans less than 2^53 ns (104 days)
// and off by a few nanoseconds beyond that.
//
// KEYS[1]: the key's tat.
// ARGV[1]: emission interval in ns (Per/Requests, as the memory limiter
// computes it); ARGV[2]: burst in calls.
// ARGV[3], ARGV[4]: now as seconds and nanoseconds, or "" to use TIME.
//
// Returns {allowed (0 or 1), retry after in ns, remaining}.
var gcraScript = redis.NewScript(`
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2]) * interval
local now_s, now_ns
if ARGV[3] == '' then
	local t = redis.call('TIME')
	now_s, now_ns = tonumber(t[1]), tonumber(t[2]) * 1000
else
	now_s, now_ns = tonumber(ARGV[3]), tonumber(ARGV[4])
end

-- ahead: how far the tat is after now, in ns; 0 when it is not.
local ahead = 0
local v = redis.call('GET', KEYS[1])
if v then
	local tat_s, tat_ns = tonumber(string.sub(v, 1, -10)), tonumber(string.sub(v, -9))
	ahead = (tat_s - now_s) * 1000000000 + (tat_ns - now_ns)
	if ahead < 0 then
		ahead = 0
	end
end

local nxt = ahead + interval
local allow_at = nxt - burst
if allow_at > 0 then
	return {0, allow_at, 0}
end

-- floor(-allow_at / interval), corrected for the rounding of the double
-- division.
local slack = -allow_at
local remaining = math.floor(slack / interval)
if (remaining + 1) * interval <= slack then
	remaining = remaining + 1
elseif remaining * interval > slack then
	remaining = remaining - 1
end

local total = now_ns + nxt
local ns = math.fmod(total, 1000000000)
local s = now_s + (total - ns) / 1000000000
redis.call('SET', KEYS[1], string.format('%d%09d', s, ns), 'PX', math.ceil(nxt / 1000000))
return {1, 0, remaining}
`)

// Allow counts one call against limit l for key.
func (r *Redis) Allow(ctx context.Context, key string, l *policy.RateLimit) (Result, error) {
	interval, _, err := emission(l)
	if err != nil {
		return Result{}, err
	}
	sec, nsec := "", ""
	if r.now != nil {
		now := r.now()
		sec, nsec = fmt.Sprint(now.Unix()), fmt.Sprint(now.Nanosecond())
	}
	v, err := gcraScript.Run(ctx, r.client, []string{r.prefix + key},
		int64(interval), l.Burst, sec, nsec).Int64Slice()
	if err != nil {
		return Result{}, fmt.Errorf("rate limit %s: redis: %w", l.ID, err)
	}
	if len(v) != 3 {
		return Result{}, fmt.Errorf("rate limit %s: redis: %w", l.ID, errBadReply)
	}
	return Result{Allowed: v[0] == 1, RetryAfter: time.Duration(v[1]), Remaining: int(v[2])}, nil
}

var errBadReply = errors.New("unexpected reply from script")
