package tokens

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// DefaultRedisPrefix starts every key and the channel a RedisStore uses
// unless RedisOptions.Prefix says otherwise. The braces are a Redis
// Cluster hash tag: every key of the store lands in one slot, which the
// multi-key Put script and List's pipeline rely on.
const DefaultRedisPrefix = "amg:{tokens}:"

// RedisStore is a Store in Redis, shared by every AMG replica, so a token
// issued or revoked through one replica is known to all of them.
//
// Layout, under the prefix:
//
//	t:<digest hex>  hash: id, agent, role, created, expires, revoked
//	                (times in Unix microseconds; absent means zero),
//	                nonce (of the Put that stored it; see putScript)
//	id:<id>         string: the digest hex, to revoke by ID
//	all             sorted set of digest hex, scored by created
//	revoked         pub/sub channel carrying each revoked ID
//
// The sorted set gives List its order for free: by score (Created), and
// for equal scores by member, the digest in hex, whose first 16 digits
// are the ID. Writes that touch several keys are Lua scripts, so they are
// atomic without transactions and a failed write leaves nothing behind.
//
// Tokens are never deleted, so the Redis must not evict keys (its default
// maxmemory-policy, noeviction) and should persist them (AOF or RDB), or a
// restart forgets every token.
type RedisStore struct {
	client  redis.UniversalClient
	prefix  string
	channel string
}

var _ Store = (*RedisStore)(nil)

// RedisOptions tune a RedisStore; nil means defaults.
type RedisOptions struct {
	// Prefix starts every key and the revocation channel; "" means
	// DefaultRedisPrefix. Replicas sharing tokens must use the same one.
	Prefix string
}

// NewRedisStore returns a Store kept in client, which may be a single
// server, a failover or a cluster client.
func NewRedisStore(client redis.UniversalClient, opts *RedisOptions) *RedisStore {
	prefix := DefaultRedisPrefix
	if opts != nil && opts.Prefix != "" {
		prefix = opts.Prefix
	}
	return &RedisStore{client: client, prefix: prefix, channel: prefix + "revoked"}
}

func (s *RedisStore) tokenKey(d Digest) string { return s.prefix + "t:" + hex.EncodeToString(d[:]) }
func (s *RedisStore) idKey(id string) string   { return s.prefix + "id:" + id }
func (s *RedisStore) allKey() string           { return s.prefix + "all" }

// putScript stores a token unless its digest or ID is already stored.
// The hash keeps a random nonce of the Put that stored it: go-redis sends
// a command again when its reply is late, and the Put sent again finds
// its own token and succeeds, rather than report a duplicate.
// KEYS: token hash, ID key, sorted set. ARGV: digest hex, id, agent, role,
// created, expires ("" for none), revoked ("" for none), nonce.
var putScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then
	if redis.call('HGET', KEYS[1], 'nonce') == ARGV[8] then
		return 1
	end
	return 0
end
redis.call('HSET', KEYS[1], 'id', ARGV[2], 'agent', ARGV[3], 'role', ARGV[4], 'created', ARGV[5], 'nonce', ARGV[8])
if ARGV[6] ~= '' then
	redis.call('HSET', KEYS[1], 'expires', ARGV[6])
end
if ARGV[7] ~= '' then
	redis.call('HSET', KEYS[1], 'revoked', ARGV[7])
end
redis.call('SET', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
return 1
`)

// revokeScript sets a token's revocation time unless it has one, and
// announces the revocation. Announcing from the script means no revocation
// is stored without its message being sent; announcing a second time
// (Revoke of a revoked token) is harmless and gives a lost message another
// chance.
// KEYS: token hash. ARGV: revoked time, channel, id.
var revokeScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then
	return 0
end
redis.call('HSETNX', KEYS[1], 'revoked', ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
`)

// Put implements Store.
func (s *RedisStore) Put(ctx context.Context, d Digest, t Token) error {
	if err := checkPut(d, t); err != nil {
		return err
	}
	t = normalize(t)
	dhex := hex.EncodeToString(d[:])
	ok, err := putScript.Run(ctx, s.client,
		[]string{s.tokenKey(d), s.idKey(t.ID), s.allKey()},
		dhex, t.ID, t.Agent, t.Role, micros(t.Created), micros(t.Expires), micros(t.Revoked), rand.Text()).Int()
	if err != nil {
		return fmt.Errorf("store token %s: %w", t.ID, err)
	}
	if ok == 0 {
		return fmt.Errorf("store token %s: %w", t.ID, errDuplicate)
	}
	return nil
}

// tokenFields are the hash fields Get and List read, in the order
// parseToken expects.
var tokenFields = []string{"id", "agent", "role", "created", "expires", "revoked"}

// Get implements Store.
func (s *RedisStore) Get(ctx context.Context, d Digest) (Token, error) {
	v, err := s.client.HMGet(ctx, s.tokenKey(d), tokenFields...).Result()
	if err != nil {
		return Token{}, fmt.Errorf("read token %s: %w", d.ID(), err)
	}
	if v[0] == nil {
		return Token{}, ErrUnknown
	}
	t, err := parseToken(v)
	if err != nil {
		return Token{}, fmt.Errorf("read token %s: %w", d.ID(), err)
	}
	return t, nil
}

// List implements Store. It reads the index, then every token in one
// pipeline; a revocation landing in between shows or not, as it would had
// it come a moment earlier or later.
func (s *RedisStore) List(ctx context.Context) ([]Token, error) {
	digests, err := s.client.ZRange(ctx, s.allKey(), 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	if len(digests) == 0 {
		return nil, nil
	}
	cmds := make([]*redis.SliceCmd, len(digests))
	_, err = s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, d := range digests {
			cmds[i] = p.HMGet(ctx, s.prefix+"t:"+d, tokenFields...)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	out := make([]Token, 0, len(digests))
	for i, cmd := range cmds {
		v := cmd.Val()
		if v[0] == nil {
			return nil, fmt.Errorf("list tokens: %.16s: %w", digests[i], errIndexHole)
		}
		t, err := parseToken(v)
		if err != nil {
			return nil, fmt.Errorf("list tokens: token %.16s: %w", digests[i], err)
		}
		out = append(out, t)
	}
	return out, nil
}

// Find implements Store: one pipeline reads the digests of ids, a second
// their tokens.
func (s *RedisStore) Find(ctx context.Context, ids []string) (map[string]Token, error) {
	// Nothing that is not an ID was ever stored under one (see Revoke).
	ids = slices.DeleteFunc(slices.Clone(ids), func(id string) bool { return !ValidID(id) })
	out := make(map[string]Token, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	// Each command's own error is looked at: a missing key or a reply
	// Redis refuses (a key of another type) leaves one ID out, a lost
	// connection fails the whole.
	digests := make([]*redis.StringCmd, len(ids))
	s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range ids {
			digests[i] = p.Get(ctx, s.idKey(id))
		}
		return nil
	})
	tokens := make([]*redis.SliceCmd, len(ids))
	for _, cmd := range digests {
		if err := unreadable(cmd.Err()); err != nil {
			return nil, fmt.Errorf("find tokens: %w", err)
		}
	}
	s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, cmd := range digests {
			if cmd.Err() == nil {
				tokens[i] = p.HMGet(ctx, s.prefix+"t:"+cmd.Val(), tokenFields...)
			}
		}
		return nil
	})
	for i, cmd := range tokens {
		if cmd == nil {
			continue
		}
		if err := unreadable(cmd.Err()); err != nil {
			return nil, fmt.Errorf("find tokens: %w", err)
		}
		if cmd.Err() != nil || cmd.Val()[0] == nil {
			continue // its token is gone (see errIndexHole)
		}
		// A token that cannot be read, or is not the one its ID names, is
		// left out (see Store).
		if t, err := parseToken(cmd.Val()); err == nil && t.ID == ids[i] {
			out[t.ID] = t
		}
	}
	return out, nil
}

// unreadable is err unless it is about the one key a command read: none
// there (redis.Nil), or a reply Redis refused, such as a key of another
// type. What remains means Redis could not be asked.
func unreadable(err error) error {
	var reply redis.Error
	if err == nil || errors.Is(err, redis.Nil) || errors.As(err, &reply) {
		return nil
	}
	return err
}

// Revoke implements Store. Every replica subscribed with Subscribe hears
// of the revocation.
func (s *RedisStore) Revoke(ctx context.Context, id string, at time.Time) error {
	if at.IsZero() {
		return errors.New("revoke token: no revocation time")
	}
	// Nothing that is not an ID was ever stored under one; answering
	// without a round trip also keeps odd strings out of key names.
	if !ValidID(id) {
		return ErrUnknown
	}
	// The ID key never changes once written (tokens are not deleted), so
	// reading it outside the script is safe, and it lets the script
	// declare the one key it writes, as Redis Cluster requires.
	dhex, err := s.client.Get(ctx, s.idKey(id)).Result()
	if errors.Is(err, redis.Nil) {
		return ErrUnknown
	}
	if err != nil {
		return fmt.Errorf("revoke token: %w", err)
	}
	ok, err := revokeScript.Run(ctx, s.client, []string{s.prefix + "t:" + dhex},
		micros(at), s.channel, id).Int()
	if err != nil {
		return fmt.Errorf("revoke token: %w", err)
	}
	if ok == 0 {
		return fmt.Errorf("revoke token: %w", errIndexHole)
	}
	return nil
}

// errIndexHole means an index names a token that is not stored. Only
// something outside AMG deletes tokens (eviction, a manual DEL).
var errIndexHole = errors.New("token is indexed but missing")

// Subscription delivers revocations announced by any RedisStore on the
// same Redis and prefix; see Subscribe.
type Subscription struct {
	ps   *redis.PubSub
	done chan struct{}
	once sync.Once
}

// Subscribe calls onRevoke with the ID of every token revoked from now on
// through any RedisStore sharing this one's Redis and prefix, this one
// included. It returns once the subscription is active, so a revocation
// made after it returns is delivered. Pass an Authenticator's Forget, so a
// token revoked through one replica stops working on every replica at
// once rather than after their CacheTTL.
//
// Delivery is best effort: a message published while this replica's
// connection is down is lost (the client reconnects and resubscribes by
// itself). The Authenticator's CacheTTL bounds how long such a loss can
// matter. onRevoke runs on one goroutine, in order, and must not block
// for long.
func (s *RedisStore) Subscribe(ctx context.Context, onRevoke func(id string)) (*Subscription, error) {
	ps := s.client.Subscribe(ctx, s.channel)
	if _, err := ps.Receive(ctx); err != nil {
		ps.Close()
		return nil, fmt.Errorf("subscribe to token revocations: %w", err)
	}
	sub := &Subscription{ps: ps, done: make(chan struct{})}
	ch := ps.Channel()
	go func() {
		defer close(sub.done)
		for m := range ch {
			if ValidID(m.Payload) {
				onRevoke(m.Payload)
			}
		}
	}()
	return sub, nil
}

// Close ends the subscription and waits until onRevoke is no longer
// running.
func (s *Subscription) Close() error {
	var err error
	s.once.Do(func() { err = s.ps.Close() })
	<-s.done
	if err != nil {
		return fmt.Errorf("close token revocation subscription: %w", err)
	}
	return nil
}

// micros is t as stored: Unix microseconds, "" for the zero time.
func micros(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return strconv.FormatInt(t.UnixMicro(), 10)
}

// parseToken decodes the values of tokenFields.
func parseToken(v []any) (Token, error) {
	var str [6]string
	for i, x := range v {
		if x == nil {
			continue
		}
		s, ok := x.(string)
		if !ok {
			return Token{}, fmt.Errorf("field %s: unexpected type %T", tokenFields[i], x)
		}
		str[i] = s
	}
	t := Token{ID: str[0], Agent: str[1], Role: str[2]}
	for i, dst := range []*time.Time{&t.Created, &t.Expires, &t.Revoked} {
		s := str[3+i]
		if s == "" {
			continue
		}
		us, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return Token{}, fmt.Errorf("field %s: %w", tokenFields[3+i], err)
		}
		*dst = time.UnixMicro(us).UTC()
	}
	if t.Created.IsZero() {
		return Token{}, errors.New("field created: missing")
	}
	return t, nil
}
