package shadow

import (
	"context"
	"crypto/rand"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis keeps counts in the Redis replicas share, so `amg shadow report`
// sees every replica's. Each day has two hashes, with a field per role:
// the would-be denials, and the calls decided. Both expire after
// retention.
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

func (r *Redis) denialsKey(day string) string { return r.prefix + day }
func (r *Redis) callsKey(day string) string   { return r.prefix + "calls:" + day }
func (r *Redis) writeKey(id string) string    { return r.prefix + "write:" + id }

// Add counts calls decided in shadow mode for role at t, denials of them
// would-be denials.
func (r *Redis) Add(ctx context.Context, role string, t time.Time, calls, denials int64) error {
	return r.AddOnce(ctx, rand.Text(), role, t, calls, denials)
}

// writeMemory is how long Redis remembers a write's id (see AddOnce): a
// write sent again later than this is counted again.
const writeMemory = time.Hour

// addScript adds one write's counts to a day's hashes, unless the write's
// id is remembered, as that of a write added before. KEYS: the denials
// hash, the calls hash, the write's id. ARGV: role, denials, calls,
// retention and writeMemory in seconds.
var addScript = redis.NewScript(`
if not redis.call('SET', KEYS[3], '1', 'NX', 'EX', ARGV[5]) then
	return 0
end
for i, n in ipairs({ARGV[2], ARGV[3]}) do
	if n ~= '0' then
		redis.call('HINCRBY', KEYS[i], ARGV[1], n)
		redis.call('EXPIRE', KEYS[i], ARGV[4])
	end
end
return 1
`)

// AddOnce is Add under id, which a write sent again keeps: Redis may have
// added a write whose reply never came (go-redis then sends it again, and
// a Batch keeps it for its next write), and adds it once.
func (r *Redis) AddOnce(ctx context.Context, id, role string, t time.Time, calls, denials int64) error {
	if calls == 0 && denials == 0 {
		return nil
	}
	day := Day(t)
	keys := []string{r.denialsKey(day), r.callsKey(day), r.writeKey(id)}
	err := addScript.Run(ctx, r.client, keys, role, denials, calls, int64(r.retention/time.Second), int64(writeMemory/time.Second)).Err()
	if err != nil {
		return fmt.Errorf("count shadow calls in redis: %w", err)
	}
	return nil
}

// Applied reports which of the writes ids Redis added (and remembers),
// in one round trip.
func (r *Redis) Applied(ctx context.Context, ids []string) (map[string]bool, error) {
	pipe := r.client.Pipeline()
	cmds := make([]*redis.IntCmd, len(ids))
	for i, id := range ids {
		cmds[i] = pipe.Exists(ctx, r.writeKey(id))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("read shadow writes in redis: %w", err)
	}
	applied := make(map[string]bool, len(ids))
	for i, c := range cmds {
		applied[ids[i]] = c.Val() > 0
	}
	return applied, nil
}

// Counts returns the counts of the days from from to to, inclusive,
// sorted by role and day, read in one round trip.
func (r *Redis) Counts(ctx context.Context, from, to time.Time) ([]Count, error) {
	type dayCmds struct {
		day            string
		denials, calls *redis.MapStringStringCmd
	}
	var days []dayCmds
	pipe := r.client.Pipeline()
	for d := from.UTC().Truncate(24 * time.Hour); Day(d) <= Day(to); d = d.Add(24 * time.Hour) {
		day := Day(d)
		days = append(days, dayCmds{day, pipe.HGetAll(ctx, r.denialsKey(day)), pipe.HGetAll(ctx, r.callsKey(day))})
	}
	if len(days) == 0 {
		return nil, nil
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("read shadow counts from redis: %w", err)
	}
	var out []Count
	for _, d := range days {
		denials, err := parseCounts(d.denials.Val(), d.day)
		if err != nil {
			return nil, err
		}
		calls, err := parseCounts(d.calls.Val(), d.day)
		if err != nil {
			return nil, err
		}
		for role, n := range denials {
			out = append(out, Count{Role: role, Day: d.day, N: n, Calls: calls[role]})
		}
		for role, n := range calls {
			if _, ok := denials[role]; !ok {
				out = append(out, Count{Role: role, Day: d.day, Calls: n})
			}
		}
	}
	sortCounts(out)
	return out, nil
}

// parseCounts reads one day's hash of counts by role.
func parseCounts(m map[string]string, day string) (map[string]int64, error) {
	out := make(map[string]int64, len(m))
	for role, v := range m {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("shadow count of %s on %s: %w", role, day, err)
		}
		out[role] = n
	}
	return out, nil
}
