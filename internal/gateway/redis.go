package gateway

import (
	"context"
	"crypto/rand"
	"fmt"
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

// minKeyLen is the shortest key a replica takes from the secret source:
// that of an HMAC-SHA256 key at full strength.
const minKeyLen = 32

// keyFromSecret returns the shared key named name from the secret ref
// the config gives for it (redis.decision_key, redis.audit_key).
func keyFromSecret(ref config.Template, src secrets.Source, name string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v, err := ref.Expand(ctx, src)
	if err != nil {
		return nil, fmt.Errorf("redis.%s_key: %w", name, err)
	}
	key := []byte(v.Reveal())
	if len(key) < minKeyLen {
		return nil, fmt.Errorf("redis.%s_key: the key is %d bytes, want at least %d", name, len(key), minKeyLen)
	}
	return key, nil
}

// sharedKey returns the 32-byte key named name that every replica uses,
// created by whichever replica asks first.
func sharedKey(client *redis.Client, name string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	k := "amg:{keys}:" + name
	fresh, err := newKey(name)
	if err != nil {
		return nil, err
	}
	if err := client.SetNX(ctx, k, fresh, 0).Err(); err != nil {
		return nil, fmt.Errorf("%s key in redis: %w", name, err)
	}
	key, err := client.Get(ctx, k).Bytes()
	if err != nil {
		return nil, fmt.Errorf("%s key in redis: %w", name, err)
	}
	if len(key) != 32 {
		return nil, fmt.Errorf("%s key in redis (%s) is %d bytes, want 32", name, k, len(key))
	}
	return key, nil
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
