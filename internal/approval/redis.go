package approval

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// DefaultRedisPrefix starts every key and channel unless
// RedisOptions.Prefix says otherwise. The braces are a Redis Cluster hash
// tag: every key lands in one slot, which the multi-key scripts and List's
// transaction rely on.
const DefaultRedisPrefix = "amg:{approvals}:"

// Redis is a Store in Redis, shared by every AMG replica, so an approval
// decided through one replica releases the call parked on another.
//
// Layout, under the prefix:
//
//	a:<id>          hash: meta (the Approval as JSON, without Body), body
//	                (the exact bytes, until the approval ends without
//	                running), state, by, reason, at (DecidedAt, RFC 3339),
//	                idx (the approval's index member), and the nonce of
//	                each transition made (nonce_create, nonce_finish,
//	                nonce_leave: see below)
//	s:<state>       sorted set per state, every score 0, of index members
//	                "<Created, fixed width> <id>": Redis orders equal
//	                scores by member, which is List's order (Created, then
//	                ID) for free
//	expiry          sorted set of index members, scored by when their hash
//	                expires (Unix ms, Redis's clock)
//	recent          sorted set of the decided approvals' index members,
//	                scored by DecidedAt (Unix ms): Recent's order
//	decided:<id>    pub/sub channel; a message (the new state) when the
//	                approval leaves pending. A store's Waits share one
//	                pattern subscription to them all
//
// Every transition is one Lua script, so it is atomic: of two replicas
// deciding one approval, the script of the second sees it decided. The
// script that makes the transition also publishes it, so no decision is
// stored without its wake-up being sent. Each transition also stores a
// random nonce of its call: go-redis sends a command again when its reply
// is late (a read timeout, a dropped connection), and the script sent
// again after it ran finds its own nonce and reports the transition made,
// rather than that someone else moved the approval first. An approval
// makes each transition at most once, so no nonce is overwritten.
//
// Hashes expire (pending ones PendingGrace after their Expires, decided
// ones Retention after the decision), so Redis does not grow forever. An
// index cannot expire its members one by one; Create trims the members
// whose hash is gone, found through the expiry set, and List and Recent
// skip any they meet before that.
//
// Any Redis failure is returned as an error, wrapped: the broker refuses a
// call it cannot park, and an operator's decision that was not stored is
// reported as failed rather than lost.
type Redis struct {
	client    redis.UniversalClient
	prefix    string
	retention time.Duration
	grace     time.Duration
	recheck   time.Duration
	decisions *decisions
}

var _ Store = (*Redis)(nil)

// RedisOptions tune a Redis store; nil means defaults.
type RedisOptions struct {
	// Prefix starts every key and channel; "" means DefaultRedisPrefix.
	// Replicas sharing approvals must use the same one. On Redis Cluster
	// it must contain a hash tag, as the default does.
	Prefix string
	// Retention is how long a decided (or executed) approval is kept
	// after its decision; 0 means DefaultRetention.
	Retention time.Duration
	// PendingGrace is how long a pending approval is kept past its
	// Expires; 0 means DefaultPendingGrace. It is counted from Created
	// (the key lives Expires-Created+PendingGrace from its creation), so
	// the replica's clock and Redis's need not agree.
	PendingGrace time.Duration
	// Recheck is how often a Wait reads the approval's state again
	// without having heard of a decision; 0 means DefaultRecheck. The
	// announcement wakes a Wait at once; reading again bounds how long a
	// decision goes unheard when its announcement is lost, as on a
	// connection that died without a word.
	Recheck time.Duration
}

// DefaultRecheck is a Wait's interval between reads of an approval's
// state unless RedisOptions.Recheck says otherwise.
const DefaultRecheck = 15 * time.Second

// NewRedis returns a Store kept in client, which may be a single server, a
// failover or a cluster client.
func NewRedis(client redis.UniversalClient, opts *RedisOptions) *Redis {
	r := &Redis{client: client, prefix: DefaultRedisPrefix, retention: DefaultRetention, grace: DefaultPendingGrace, recheck: DefaultRecheck}
	if opts != nil {
		if opts.Prefix != "" {
			r.prefix = opts.Prefix
		}
		if opts.Retention > 0 {
			r.retention = opts.Retention
		}
		if opts.PendingGrace > 0 {
			r.grace = opts.PendingGrace
		}
		if opts.Recheck > 0 {
			r.recheck = opts.Recheck
		}
	}
	r.decisions = newDecisions(client, r.channel(""))
	return r
}

// states are every State, in the order of an approval's life: List reads
// their indexes in this order.
var states = []State{Pending, Approved, Denied, Expired, Cancelled, Executed, Voided}

func (r *Redis) key(id string) string     { return r.prefix + "a:" + id }
func (r *Redis) index(s State) string     { return r.prefix + "s:" + string(s) }
func (r *Redis) expiryKey() string        { return r.prefix + "expiry" }
func (r *Redis) recentKey() string        { return r.prefix + "recent" }
func (r *Redis) channel(id string) string { return r.prefix + "decided:" + id }
func (r *Redis) indexes() (keys []string) {
	for _, s := range states {
		keys = append(keys, r.index(s))
	}
	return keys
}

// indexTime formats Created in index members: fixed width, so that byte
// order is time order (for years 0 to 9999).
const indexTime = "20060102T150405.000000000"

// pruneBatch bounds how many expired index members one Create removes. It
// exceeds the one member a Create adds, so trimming keeps up, while one
// Create never stalls Redis on a large backlog.
const pruneBatch = 100

// createScript stores a new pending approval unless its id is taken, then
// trims index members whose hash has expired. Trimming reads hashes named
// in the expiry set, which the script cannot declare in advance; they
// share the prefix's hash tag, hence the slot, which Redis Cluster
// accepts.
// KEYS: hash, expiry set, then the state indexes in states' order (so
// KEYS[3] is pending's), then the recent set. ARGV: meta, body, index
// member, TTL in ms, prefix of hash keys, prune batch, retention in ms,
// Expires in Unix ms, nonce.
var createScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then
	if redis.call('HGET', KEYS[1], 'nonce_create') == ARGV[9] then
		return 1
	end
	return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'meta', ARGV[1], 'body', ARGV[2], 'state', 'pending', 'idx', ARGV[3], 'expires', ARGV[8], 'nonce_create', ARGV[9])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('ZADD', KEYS[3], 0, ARGV[3])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[3])
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[6]))
for _, m in ipairs(due) do
	local id = string.sub(m, string.find(m, ' ', 1, true) + 1)
	local ttl = redis.call('PTTL', ARGV[5] .. id)
	if ttl == -2 then
		for i = 3, #KEYS do
			redis.call('ZREM', KEYS[i], m)
		end
		redis.call('ZREM', KEYS[2], m)
	elseif ttl >= 0 then
		-- Still there (its TTL was extended): look again when it ends.
		redis.call('ZADD', KEYS[2], now + ttl, m)
	else
		-- Made persistent by hand: look again a Retention later.
		redis.call('ZADD', KEYS[2], now + tonumber(ARGV[7]), m)
	end
end
return 1
`)

// finishScript moves a pending approval to ARGV[1] and publishes the move;
// a decision (approved, denied) must come before the approval expires.
// Any move but approved drops the request, which will not run.
// KEYS: hash, pending index, target index, expiry set, recent set. ARGV:
// to, by, reason, at, retention in ms, channel, at in Unix ms (empty:
// Redis's time), nonce.
var finishScript = redis.NewScript(`
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
	return 'notfound'
end
if state ~= 'pending' then
	if redis.call('HGET', KEYS[1], 'nonce_finish') == ARGV[8] then
		return redis.call('HGETALL', KEYS[1])
	end
	return 'notpending'
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expires = tonumber(redis.call('HGET', KEYS[1], 'expires'))
if expires and (ARGV[1] == 'approved' or ARGV[1] == 'denied') and (tonumber(ARGV[7]) or now) >= expires then
	return 'expired'
end
local m = redis.call('HGET', KEYS[1], 'idx')
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'by', ARGV[2], 'reason', ARGV[3], 'at', ARGV[4], 'nonce_finish', ARGV[8])
if ARGV[1] ~= 'approved' then
	redis.call('HDEL', KEYS[1], 'body')
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('ZREM', KEYS[2], m)
redis.call('ZADD', KEYS[3], 0, m)
redis.call('ZADD', KEYS[4], now + tonumber(ARGV[5]), m)
redis.call('ZADD', KEYS[5], tonumber(ARGV[7]) or now, m)
redis.call('PUBLISH', ARGV[6], ARGV[1])
return redis.call('HGETALL', KEYS[1])
`)

// leaveApprovedScript moves an approved approval to executed or voided.
// Its expiry stays counted from the decision: what follows adds nothing
// worth keeping longer. Voided drops the request, which will not run.
// KEYS: hash, approved index, target index. ARGV: the target state; for
// executed, the request parked, which the stored one must equal; for
// voided, why; nonce.
var leaveApprovedScript = redis.NewScript(`
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
	return 'notfound'
end
if state ~= 'approved' then
	if redis.call('HGET', KEYS[1], 'nonce_leave') == ARGV[3] then
		return redis.call('HGETALL', KEYS[1])
	end
	return 'notapproved'
end
if ARGV[1] == 'executed' then
	if redis.call('HGET', KEYS[1], 'body') ~= ARGV[2] then
		return 'altered'
	end
	redis.call('HSET', KEYS[1], 'state', 'executed', 'nonce_leave', ARGV[3])
else
	redis.call('HSET', KEYS[1], 'state', 'voided', 'void', ARGV[2], 'nonce_leave', ARGV[3])
	redis.call('HDEL', KEYS[1], 'body')
end
local m = redis.call('HGET', KEYS[1], 'idx')
redis.call('ZREM', KEYS[2], m)
redis.call('ZADD', KEYS[3], 0, m)
return redis.call('HGETALL', KEYS[1])
`)

// Create implements Store.
func (r *Redis) Create(ctx context.Context, a *Approval) error {
	if a.ID == "" {
		return errors.New("create approval: no id")
	}
	if a.State != Pending {
		return fmt.Errorf("create approval %s: state %s, want pending", a.ID, a.State)
	}
	meta, err := json.Marshal(a)
	if err != nil {
		return fmt.Errorf("create approval %s: %w", a.ID, err)
	}
	ttl := max(a.Expires.Sub(a.Created), 0) + r.grace
	keys := append(append([]string{r.key(a.ID), r.expiryKey()}, r.indexes()...), r.recentKey())
	ok, err := createScript.Run(ctx, r.client, keys,
		meta, a.Body, a.Created.UTC().Format(indexTime)+" "+a.ID, millis(ttl), r.key(""), pruneBatch,
		millis(r.retention), a.Expires.UnixMilli(), rand.Text()).Int()
	if err != nil {
		return fmt.Errorf("create approval %s: %w", a.ID, err)
	}
	if ok == 0 {
		return fmt.Errorf("create approval %s: already exists", a.ID)
	}
	return nil
}

// Get implements Store.
func (r *Redis) Get(ctx context.Context, id string) (*Approval, error) {
	h, err := r.client.HGetAll(ctx, r.key(id)).Result()
	if err != nil {
		return nil, fmt.Errorf("read approval %s: %w", id, err)
	}
	if len(h) == 0 {
		return nil, ErrNotFound
	}
	a, err := decode(h)
	if err != nil {
		return nil, fmt.Errorf("read approval %s: %w", id, err)
	}
	return a, nil
}

// List implements Store. It reads the indexes in one transaction, then
// every approval in one pipeline; an approval that moved in between is
// listed in its new state (or left out of a list of its old one), as had
// the move come a moment earlier.
func (r *Redis) List(ctx context.Context, state State) ([]*Approval, error) {
	want := states
	if state != "" {
		want = []State{state}
	}
	ranges := make([]*redis.StringSliceCmd, len(want))
	_, err := r.client.TxPipelined(ctx, func(p redis.Pipeliner) error {
		for i, s := range want {
			ranges[i] = p.ZRange(ctx, r.index(s), 0, -1)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list approvals: %w", err)
	}
	var members []string
	for _, c := range ranges {
		members = append(members, c.Val()...)
	}
	// Members sort as their approvals should: by Created, then ID.
	slices.Sort(members)
	if len(members) == 0 {
		return nil, nil
	}
	all, err := r.read(ctx, members)
	if err != nil {
		return nil, fmt.Errorf("list approvals: %w", err)
	}
	out := all[:0]
	for _, a := range all {
		if state == "" || a.State == state {
			out = append(out, a)
		}
	}
	return out, nil
}

// CountPending implements Store. It reads the pending index's members
// and asks which of their hashes still exist, as List skips the members
// of hashes expired but not yet trimmed: nothing of the approvals
// themselves, whose bodies may be large.
func (r *Redis) CountPending(ctx context.Context) (int64, error) {
	members, err := r.client.ZRange(ctx, r.index(Pending), 0, -1).Result()
	if err != nil {
		return 0, fmt.Errorf("count pending approvals: %w", err)
	}
	if len(members) == 0 {
		return 0, nil
	}
	keys := make([]string, len(members))
	for i, m := range members {
		keys[i] = r.key(memberID(m))
	}
	n, err := r.client.Exists(ctx, keys...).Result()
	if err != nil {
		return 0, fmt.Errorf("count pending approvals: %w", err)
	}
	return n, nil
}

// read returns the approvals of index members, in their order, in one
// pipeline; those whose hash has expired, not yet trimmed from the
// indexes, are left out.
func (r *Redis) read(ctx context.Context, members []string) ([]*Approval, error) {
	hashes := make([]*redis.MapStringStringCmd, len(members))
	_, err := r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, m := range members {
			hashes[i] = p.HGetAll(ctx, r.key(memberID(m)))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	out := make([]*Approval, 0, len(members))
	for i, c := range hashes {
		h := c.Val()
		if len(h) == 0 {
			continue
		}
		a, err := decode(h)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", memberID(members[i]), err)
		}
		out = append(out, a)
	}
	return out, nil
}

// Recent implements Store. It reads the recent set newest first, n
// members at a time, and their approvals in one pipeline per page, until
// it has n or the set ends; members whose approval has expired but which
// no Create has trimmed yet are passed over.
func (r *Redis) Recent(ctx context.Context, n int) ([]*Approval, error) {
	var out []*Approval
	for start := int64(0); len(out) < n; start += int64(n) {
		members, err := r.client.ZRevRange(ctx, r.recentKey(), start, start+int64(n)-1).Result()
		if err != nil {
			return nil, fmt.Errorf("recent approvals: %w", err)
		}
		if len(members) == 0 {
			break
		}
		got, err := r.read(ctx, members)
		if err != nil {
			return nil, fmt.Errorf("recent approvals: %w", err)
		}
		out = append(out, got...)
	}
	return out[:min(len(out), max(n, 0))], nil
}

// Finish implements Store. Every Wait on the approval, on any replica,
// returns.
func (r *Redis) Finish(ctx context.Context, id string, to State, by, reason string, at time.Time) (*Approval, error) {
	if err := checkFinish(to); err != nil {
		return nil, err
	}
	var when, whenMillis string
	if !at.IsZero() {
		when, whenMillis = at.UTC().Format(time.RFC3339Nano), strconv.FormatInt(at.UnixMilli(), 10)
	}
	res, err := finishScript.Run(ctx, r.client,
		[]string{r.key(id), r.index(Pending), r.index(to), r.expiryKey(), r.recentKey()},
		string(to), by, reason, when, millis(r.retention), r.channel(id), whenMillis, rand.Text()).Result()
	if err != nil {
		return nil, fmt.Errorf("finish approval %s: %w", id, err)
	}
	a, err := scriptResult(res, map[string]error{"notfound": ErrNotFound, "notpending": ErrNotPending, "expired": ErrExpired})
	if err != nil && !isSentinel(err) {
		return nil, fmt.Errorf("finish approval %s: %w", id, err)
	}
	return a, err
}

// Execute implements Store.
func (r *Redis) Execute(ctx context.Context, id string, body []byte) (*Approval, error) {
	return r.leaveApproved(ctx, id, Executed, body)
}

// Void implements Store.
func (r *Redis) Void(ctx context.Context, id, reason string) (*Approval, error) {
	return r.leaveApproved(ctx, id, Voided, reason)
}

// leaveApproved moves the approved approval id to executed (arg: the
// request parked) or voided (arg: why).
func (r *Redis) leaveApproved(ctx context.Context, id string, to State, arg any) (*Approval, error) {
	verb := map[State]string{Executed: "execute", Voided: "void"}[to]
	res, err := leaveApprovedScript.Run(ctx, r.client,
		[]string{r.key(id), r.index(Approved), r.index(to)}, string(to), arg, rand.Text()).Result()
	if err != nil {
		return nil, fmt.Errorf("%s approval %s: %w", verb, id, err)
	}
	a, err := scriptResult(res, map[string]error{"notfound": ErrNotFound, "notapproved": ErrNotApproved, "altered": ErrAltered})
	if err != nil && !isSentinel(err) {
		return nil, fmt.Errorf("%s approval %s: %w", verb, id, err)
	}
	return a, err
}

// Wait implements Store. It joins the store's subscription to decisions
// (one connection for every Wait of the store; see decisions) and only
// once that is live reads the approval's state, so a decision made in
// between is either seen in the state or heard on the channel.
//
// A Redis failure while waiting (the connection dropped, say) ends Wait
// with an error rather than a silent resubscription: a decision published
// while the connection was down would never be heard. A failure no one
// reports is covered by reading the state again every Recheck.
func (r *Redis) Wait(ctx context.Context, id string) (*Approval, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s, w := r.decisions.join(id)
	defer r.decisions.leave(s, id, w)
	select {
	case <-s.live:
	case err := <-w.fail:
		return nil, fmt.Errorf("wait for approval %s: subscribe: %w", id, err)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	recheck := time.NewTicker(r.recheck)
	defer recheck.Stop()
	for {
		a, err := r.Get(ctx, id)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, err
		}
		if a.State.Final() {
			return a, nil
		}
		select {
		case <-w.wake:
		case <-recheck.C:
		case err := <-w.fail:
			return nil, fmt.Errorf("wait for approval %s: %w", id, err)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// decode rebuilds an approval from its hash.
func decode(h map[string]string) (*Approval, error) {
	var a Approval
	if err := json.Unmarshal([]byte(h["meta"]), &a); err != nil {
		return nil, fmt.Errorf("field meta: %w", err)
	}
	if h["state"] == "" {
		return nil, errors.New("field state: missing")
	}
	a.State, a.DecidedBy, a.Reason, a.DecidedAt = State(h["state"]), h["by"], h["reason"], time.Time{}
	a.VoidReason = h["void"]
	if body, ok := h["body"]; ok {
		a.Body = []byte(body)
	}
	if s := h["at"]; s != "" {
		at, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return nil, fmt.Errorf("field at: %w", err)
		}
		a.DecidedAt = at
	}
	return &a, nil
}

// scriptResult turns a transition script's reply into the approval it
// returned, or the Store error its status word stands for.
func scriptResult(res any, words map[string]error) (*Approval, error) {
	switch v := res.(type) {
	case string:
		if err, ok := words[v]; ok {
			return nil, err
		}
		return nil, fmt.Errorf("unexpected script reply %q", v)
	case []any:
		if len(v)%2 != 0 {
			return nil, fmt.Errorf("script reply of odd length %d", len(v))
		}
		h := make(map[string]string, len(v)/2)
		for i := 0; i < len(v); i += 2 {
			k, ok1 := v[i].(string)
			val, ok2 := v[i+1].(string)
			if !ok1 || !ok2 {
				return nil, fmt.Errorf("script reply of unexpected types %T, %T", v[i], v[i+1])
			}
			h[k] = val
		}
		return decode(h)
	}
	return nil, fmt.Errorf("script reply of unexpected type %T", res)
}

// isSentinel reports whether err is one of the Store errors callers
// branch on, returned as they are (like Memory's).
func isSentinel(err error) bool {
	return err == ErrNotFound || err == ErrNotPending || err == ErrExpired || err == ErrNotApproved || err == ErrAltered
}

// memberID is the id in an index member. Created, before it, holds no
// space; the id may.
func memberID(m string) string {
	_, id, _ := strings.Cut(m, " ")
	return id
}

// millis is d in whole milliseconds, at least 1: Redis expires keys to the
// millisecond, and a TTL of 0 would delete at once.
func millis(d time.Duration) string {
	return strconv.FormatInt(max(d.Milliseconds(), 1), 10)
}
