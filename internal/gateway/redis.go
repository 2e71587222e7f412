package gateway

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/amgateway/amg/internal/config"
	"github.com/amgateway/amg/internal/secrets"
)

// dialRedis connects to the Redis replicas share and checks that it
// answers: a replica that cannot reach its shared state does not start.
// (Later outages are each request's problem: every store fails closed.)
func dialRedis(c config.Redis, src secrets.Source) (*redis.Client, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// A command ends by its context's deadline, not only at the client's
	// read timeout: a Check gives Redis less than its whole authz_timeout,
	// so that it can still answer when Redis stalls.
	opts := &redis.Options{Addr: c.Address, Username: c.Username, DB: c.DB, ContextTimeoutEnabled: true}
	if c.TLS != nil {
		tc, err := c.TLS.Config()
		if err != nil {
			return nil, fmt.Errorf("redis tls: %w", err)
		}
		opts.TLSConfig = tc
	}
	if c.Password.String() != "" {
		pw, err := c.Password.Expand(ctx, src)
		if err != nil {
			return nil, fmt.Errorf("redis password: %w", err)
		}
		opts.Password = pw.Reveal()
	}
	client := redis.NewClient(opts)
	if err := client.Ping(ctx).Err(); err != nil {
		client.Close()
		return nil, fmt.Errorf("redis at %s: %w", c.Address, err)
	}
	return client, nil
}

// keyFromSecret returns the shared key named name from the secret ref
// the config gives for it (redis.decision_key, redis.audit_key).
func keyFromSecret(ref config.Template, src secrets.Source, name string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), secretKeyTimeout)
	defer cancel()
	v, err := ref.Expand(ctx, src)
	if err != nil {
		return nil, fmt.Errorf("redis.%s_key: %w", name, err)
	}
	key := []byte(v.Reveal())
	if len(key) < config.MinSharedKeyLen {
		return nil, fmt.Errorf("redis.%s_key: the key is %d bytes, want at least %d", name, len(key), config.MinSharedKeyLen)
	}
	return key, nil
}

// secretKeyTimeout bounds the reading of a shared key from the secret
// source.
const secretKeyTimeout = 10 * time.Second

// heldKey is a shared key a replica took from Redis or from the secret
// source: its name ("decision", "audit"), its Redis key or the config's
// secret ref, and its value.
type heldKey struct {
	name, redisKey string
	ref            config.Template
	value          []byte
}

// sharedKey returns the 32-byte key named name that every replica uses,
// created by whichever replica asks first.
func (g *Gateway) sharedKey(name string) (heldKey, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	k := "amg:{keys}:" + name
	fresh, err := newKey(name)
	if err != nil {
		return heldKey{}, err
	}
	// One command both writes the fresh key if Redis holds none and reads
	// the one it holds.
	key, err := g.redis.SetArgs(ctx, k, fresh, redis.SetArgs{Mode: "NX", Get: true}).Bytes()
	switch {
	case errors.Is(err, redis.Nil):
		// Right at a first start; else Redis lost its data, and replicas
		// already running keep the key they had until they put it back.
		key = fresh
		g.log.Warn("redis held no shared "+name+" key: this replica made a new one; if Redis lost its data, replicas running "+
			"with the old one disagree with this one until restarted (their /readyz says so)", "redis_key", k)
	case err != nil:
		return heldKey{}, fmt.Errorf("%s key in redis: %w", name, err)
	}
	if len(key) != 32 {
		return heldKey{}, fmt.Errorf("%s key in redis (%s) is %d bytes, want 32", name, k, len(key))
	}
	return heldKey{name: name, redisKey: k, value: key}, nil
}

// defaultSharedKeyCheck is how often a replica checks that Redis, or the
// secret source, holds its shared keys.
const defaultSharedKeyCheck = 5 * time.Second

// watchSharedKeys checks, every keyCheck until ctx ends, that Redis still
// holds the shared keys this replica took from it, and that the secret
// source still holds those it took from there. Redis that lost its
// data (a restart without persistence, a failover to a replica that
// lagged) is given this replica's keys back, so that a replica starting
// later takes them rather than make its own. A key in Redis that is not
// this replica's (another replica made one before this one put its key
// back) means the two disagree: each refuses the other's decisions
// (decision_invalid) and their audit HMACs differ. That lasts until this
// replica restarts and takes the key Redis holds, or Redis holds this
// replica's key again: it is logged, and /readyz answers 503 saying so
// meanwhile. A key rotated in the secret source splits the replicas the
// same way (one started since takes the new key), and is reported the
// same way, until the source holds this replica's key again.
func (g *Gateway) watchSharedKeys(ctx context.Context) {
	if len(g.sharedKeys) == 0 {
		return
	}
	t := time.NewTicker(g.keyCheck)
	defer t.Stop()
	// troubles[i] says what is wrong with sharedKeys[i], "" if nothing.
	troubles := make([]string, len(g.sharedKeys))
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var why *string
		for i, k := range g.sharedKeys {
			troubles[i] = g.checkSharedKey(ctx, k, troubles[i])
			if troubles[i] != "" && why == nil {
				w := troubles[i]
				why = &w
			}
		}
		g.keyTrouble.Store(why)
	}
}

// checkSharedKey puts k back in Redis if Redis lost it, and returns what
// is wrong with k: "" if Redis, or the secret source, holds it, and was,
// what was wrong at the last check, if neither can be read now. A change
// is logged.
func (g *Gateway) checkSharedKey(ctx context.Context, k heldKey, was string) string {
	if k.ref.String() != "" {
		return g.checkSecretKey(ctx, k, was)
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	v, err := g.redis.SetArgs(ctx, k.redisKey, k.value, redis.SetArgs{Mode: "NX", Get: true}).Bytes()
	switch {
	case errors.Is(err, redis.Nil):
		g.log.Warn("redis had lost the shared "+k.name+" key (did it restart without persistence?): this replica put its own back",
			"redis_key", k.redisKey)
		return g.keyMended(was, "redis_key", k.redisKey)
	case err != nil:
		// Each request that needs Redis fails closed meanwhile.
		g.log.Debug("cannot check a shared key in redis", "redis_key", k.redisKey, "err", err)
		return was
	case bytes.Equal(v, k.value):
		return g.keyMended(was, "redis_key", k.redisKey)
	}
	if was == "" {
		g.log.Error("the shared "+k.name+" key in redis is not this replica's (another replica made a new one after redis lost its data); "+
			"the two refuse each other's decisions and their audit HMACs differ until this replica restarts", "redis_key", k.redisKey)
	}
	return "the shared " + k.name + " key in redis (" + k.redisKey + ") is not the one this replica uses: restart it"
}

// checkSecretKey is checkSharedKey for a key k the replica took from the
// secret source: wrong if the source holds another value for k than the
// one this replica took at start. The secret source caches its values
// (Vault's cache_ttl), so this costs it no more reads than an upstream
// connection does.
func (g *Gateway) checkSecretKey(ctx context.Context, k heldKey, was string) string {
	ctx, cancel := context.WithTimeout(ctx, secretKeyTimeout)
	defer cancel()
	// The references, not the template: text around them is part of
	// the key.
	var refs []string
	for _, r := range k.ref.Refs() {
		refs = append(refs, r.String())
	}
	ref := strings.Join(refs, ", ")
	v, err := k.ref.Expand(ctx, g.keySource)
	if err != nil {
		// The key in use stays right; only a replica starting now fails.
		g.log.Debug("cannot check a shared key in the secret source", "ref", ref, "err", err)
		return was
	}
	if v.Reveal() == string(k.value) {
		return g.keyMended(was, "ref", ref)
	}
	if was == "" {
		g.log.Error("the shared "+k.name+" key was rotated in the secret source; this replica keeps the one it read at start, "+
			"so it and the replicas started since refuse each other's decisions and their audit HMACs differ until it restarts",
			"ref", ref)
	}
	return "the " + k.name + " key (redis." + k.name + "_key, " + ref + ") was rotated in the secret source: " +
		"restart to take the rotated " + k.name + " key"
}

// keyMended logs, if a key was wrong (was), that it is this replica's
// again, where says where; it returns "", nothing wrong.
func (g *Gateway) keyMended(was string, where ...any) string {
	if was != "" {
		g.log.Info("a shared key is this replica's again", where...)
	}
	return ""
}

// keysNotReady says why the replica is not ready, if its shared keys are
// not those in Redis or the secret source ("" while they are).
func (g *Gateway) keysNotReady() string {
	if why := g.keyTrouble.Load(); why != nil {
		return *why
	}
	return ""
}

// newKey returns a new random 32-byte key named name.
func newKey(name string) ([]byte, error) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("%s key: %w", name, err)
	}
	return key, nil
}

// followRevocations drops tokens revoked on any replica from this one's
// cache as soon as Redis says so, until ctx ends; the cache's short TTL
// is the backstop for a message lost while disconnected.
func (g *Gateway) followRevocations(ctx context.Context) {
	if g.redisTokens == nil {
		return
	}
	sub, err := g.redisTokens.Subscribe(ctx, g.auth.Forget)
	if err != nil {
		g.log.Error("cannot follow token revocations; they apply within the cache TTL", "err", err)
		return
	}
	<-ctx.Done()
	sub.Close()
}
