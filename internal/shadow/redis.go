package shadow

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis keeps counts in the Redis replicas share: one hash per day, field
// per role, so `amg shadow report` sees every replica's would-be denials.
// A day's hash expires after retention.
type Redis struct {
	client    redis.UniversalClient
	prefix    string
	retention time.Duration
}

// DefaultRedisPrefix starts every key; the braces keep them in one Redis
// Cluster slot.
const DefaultRedisPrefix = "amg:{shadow}:"

// NewRedis returns a counter in client's Redis, keeping each day for 400
// days (a year of reports, with room).
func NewRedis(client redis.UniversalClient) *Redis {
	return &Redis{client: client, prefix: DefaultRedisPrefix, retention: 400 * 24 * time.Hour}
}

func (r *Redis) key(day string) string { return r.prefix + day }

// Inc counts one would-be denial of role at t.
func (r *Redis) Inc(ctx context.Context, role string, t time.Time) error {
	k := r.key(Day(t))
	pipe := r.client.TxPipeline()
	pipe.HIncrBy(ctx, k, role, 1)
	pipe.Expire(ctx, k, r.retention)
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("count shadow denial in redis: %w", err)
	}
	return nil
}

// Counts returns the counts of the days from from to to, inclusive,
// sorted by role and day.
func (r *Redis) Counts(ctx context.Context, from, to time.Time) ([]Count, error) {
	var out []Count
	for d := from.UTC().Truncate(24 * time.Hour); Day(d) <= Day(to); d = d.Add(24 * time.Hour) {
		day := Day(d)
		m, err := r.client.HGetAll(ctx, r.key(day)).Result()
		if err != nil {
			return nil, fmt.Errorf("read shadow counts from redis: %w", err)
		}
		for role, v := range m {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("shadow count of %s on %s: %w", role, day, err)
			}
			out = append(out, Count{Role: role, Day: day, N: n})
		}
	}
	sortCounts(out)
	return out, nil
}
