package gateway

import (
	"context"
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
	opts := &redis.Options{Addr: c.Address, DB: c.DB}
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
