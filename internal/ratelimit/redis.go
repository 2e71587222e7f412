package ratelimit

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/amgateway/amg/internal/policy"
)

// DefaultRedisPrefix starts every key a Redis limiter writes unless
// RedisOptions.Prefix says otherwise.
const DefaultRedisPrefix = "amg:{ratelimit}:"

// Redis is a Limiter shared by every AMG replica that uses the same Redis,
// so a limit is one budget for the whole deployment rather than one per
// replica.
//
// Each AllowAll is one script run atomically by Redis: read each key's
// theoretical arrival time (tat), apply GCRA, and write the new tats only
// if every limit allowed the call. Atomicity is what keeps concurrent
// replicas from both spending the last unit of a budget, and a call one
// limit refuses from spending any other's. The clock is Redis's own (TIME, read inside the script), so
// replicas whose clocks disagree still agree on every budget.
//
// A key lives only until its tat has passed, when its budget is full again
// and the key means nothing; Redis expires it, so idle keys cost nothing.
//
// go-redis sends a script again when its reply is late or its connection
// drops, though Redis may have run it: each run carries a random nonce,
// and a call allowed keeps its reply under it for replyMemory, so that
// the same run again answers as the first did instead of spending twice.
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
	// that share budgets must use the same prefix. One script reads and
	// writes all the keys of a call, so on a Redis Cluster the prefix must
	// hold a hash tag, as the default does, to keep them in one slot.
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
// single server, a failover or a cluster client (see RedisOptions.Prefix).
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

// gcraScript is AllowAll's gcra in ratelimit.go, in Lua, over every spend
// of one call at once.
//
// Redis's Lua numbers are doubles, exact for integers below 2^53, but a
// time in nanoseconds since the epoch is about 2^61. So absolute times are
// never held in one number: the tat is stored as the decimal string of its
// nanoseconds since the epoch (readable with redis-cli), split into seconds
// and nanoseconds when read, and all arithmetic is on offsets from now,
// which are exact while a limit's burst spans less than 2^53 ns (104 days)
// and off by a few nanoseconds beyond that.
//
// KEYS: the spends' keys' tats, in order; a key may come more than once;
// last, the key of the run's nonce.
// ARGV[1], ARGV[2]: now as seconds and nanoseconds, or "" to use TIME.
// ARGV[2i+1], ARGV[2i+2]: the emission interval in ns (Per/Requests, as
// the memory limiter computes it) and the burst in calls of KEYS[i].
// Last: replyMemory in ms.
//
// Returns {allowed (0 or 1), retry after in ns, remaining, the index in
// KEYS of the spend refused or 0}: after a refusal the spends are all
// still applied, as if each were spent, and the reply names the one that
// waits longest. Nothing is written unless every spend is allowed; then
// the nonce's key keeps remaining, and a run with the same nonce returns
// the same reply and writes nothing.
var gcraScript = redis.NewScript(`
local nonce = KEYS[#KEYS]
local done = redis.call('GET', nonce)
if done then
	return {1, 0, tonumber(done), 0}
end

local now_s, now_ns
if ARGV[1] == '' then
	local t = redis.call('TIME')
	now_s, now_ns = tonumber(t[1]), tonumber(t[2]) * 1000
else
	now_s, now_ns = tonumber(ARGV[1]), tonumber(ARGV[2])
end

-- ahead[key]: how far the key's tat is after now, in ns, as the spends
-- so far leave it.
local ahead = {}
local least
local wait, refused = 0, 0
for i = 1, #KEYS - 1 do
	local key = KEYS[i]
	local interval = tonumber(ARGV[2 * i + 1])
	local burst = tonumber(ARGV[2 * i + 2]) * interval
	local a = ahead[key]
	if not a then
		a = 0
		local v = redis.call('GET', key)
		if v then
			local tat_s, tat_ns = tonumber(string.sub(v, 1, -10)), tonumber(string.sub(v, -9))
			a = (tat_s - now_s) * 1000000000 + (tat_ns - now_ns)
			if a < 0 then
				a = 0
			end
		end
	end

	local nxt = a + interval
	local allow_at = nxt - burst
	if allow_at > 0 then
		-- Refused: the rest only tell how long the call must wait.
		if allow_at > wait then
			wait, refused = allow_at, i
		end
	elseif refused == 0 then
		-- floor(-allow_at / interval), corrected for the rounding of the
		-- double division.
		local slack = -allow_at
		local remaining = math.floor(slack / interval)
		if (remaining + 1) * interval <= slack then
			remaining = remaining + 1
		elseif remaining * interval > slack then
			remaining = remaining - 1
		end
		if not least or remaining < least then
			least = remaining
		end
	end
	ahead[key] = nxt
end
if refused > 0 then
	return {0, wait, 0, refused}
end

for key, a in pairs(ahead) do
	local total = now_ns + a
	local ns = math.fmod(total, 1000000000)
	local s = now_s + (total - ns) / 1000000000
	redis.call('SET', key, string.format('%d%09d', s, ns), 'PX', math.ceil(a / 1000000))
end
redis.call('SET', nonce, least or 0, 'PX', ARGV[#ARGV])
return {1, 0, least or 0, 0}
`)

// replyMemory is how long Redis keeps the reply of a call allowed, for
// go-redis's sending the same script again: longer than its retries of
// one command take.
const replyMemory = time.Minute

// Allow counts one call against limit l for key.
func (r *Redis) Allow(ctx context.Context, key string, l *policy.RateLimit) (Result, error) {
	res, _, err := r.AllowAll(ctx, []Spend{{Key: key, Limit: l}})
	return res, err
}

// AllowAll counts one call against each of spends, all or none, as
// [Memory.AllowAll] does, in one script run atomically by Redis.
func (r *Redis) AllowAll(ctx context.Context, spends []Spend) (Result, int, error) {
	if len(spends) == 0 {
		return Result{Allowed: true}, -1, nil
	}
	keys := make([]string, len(spends), len(spends)+1)
	args := make([]any, 2, 3+2*len(spends))
	args[0], args[1] = "", ""
	if r.now != nil {
		now := r.now()
		args[0], args[1] = fmt.Sprint(now.Unix()), fmt.Sprint(now.Nanosecond())
	}
	for i, sp := range spends {
		interval, _, err := emission(sp.Limit)
		if err != nil {
			return Result{}, -1, err
		}
		keys[i] = r.prefix + sp.Key
		args = append(args, int64(interval), sp.Limit.Burst)
	}
	keys = append(keys, r.prefix+"reply:"+rand.Text())
	args = append(args, replyMemory.Milliseconds())
	what := "rate limit " + spends[0].Limit.ID
	if len(spends) > 1 {
		what += fmt.Sprintf(" and %d more", len(spends)-1)
	}
	v, err := gcraScript.Run(ctx, r.client, keys, args...).Int64Slice()
	if err != nil {
		return Result{}, -1, fmt.Errorf("%s: redis: %w", what, err)
	}
	if len(v) != 4 || v[0] == 0 && (v[3] < 1 || v[3] > int64(len(spends))) {
		return Result{}, -1, fmt.Errorf("%s: redis: %w", what, errBadReply)
	}
	res := Result{Allowed: v[0] == 1, RetryAfter: time.Duration(v[1]), Remaining: int(v[2])}
	if !res.Allowed {
		return res, int(v[3] - 1), nil
	}
	return res, -1, nil
}

var errBadReply = errors.New("unexpected reply from script")
