package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisSessions is a SessionStore in the Redis replicas share: each
// session's record under amg:{sessions}:<id>, replaced by a mark when the
// session ends, and the end of each announced on one channel.
type RedisSessions struct{ client redis.UniversalClient }

var _ SessionStore = (*RedisSessions)(nil)

// NewRedisSessions returns a SessionStore kept in client.
func NewRedisSessions(client redis.UniversalClient) *RedisSessions {
	return &RedisSessions{client: client}
}

// sessionsEnded is the channel the ends of sessions are announced on.
const sessionsEnded = "amg:{sessions}:ended"

// endedMark is what the key of an ended session holds: no record is
// this.
const endedMark = "ended"

func (s *RedisSessions) key(id string) string { return "amg:{sessions}:" + id }

// saveScript saves a session's record unless the session ended.
// KEYS: the record. ARGV: the record, its lifetime in ms, the ended mark.
var saveScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[3] then
	return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
`)

// deleteScript marks a session ended and announces its end: from one
// script, no session ends without its message being sent.
// KEYS: the record. ARGV: the ended mark, its lifetime in ms, channel, id.
var deleteScript = redis.NewScript(`
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
`)

// Save implements SessionStore.
func (s *RedisSessions) Save(ctx context.Context, id string, rec SessionRecord, ttl time.Duration) error {
	data, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	saved, err := saveScript.Run(ctx, s.client, []string{s.key(id)}, data, ttl.Milliseconds(), endedMark).Int()
	if err != nil {
		return fmt.Errorf("save session in redis: %w", err)
	}
	if saved == 0 {
		return ErrSessionEnded
	}
	return nil
}

// Load implements SessionStore.
func (s *RedisSessions) Load(ctx context.Context, id string) (SessionRecord, bool, error) {
	var rec SessionRecord
	data, err := s.client.Get(ctx, s.key(id)).Bytes()
	if errors.Is(err, redis.Nil) || string(data) == endedMark {
		return rec, false, nil
	}
	if err != nil {
		return rec, false, fmt.Errorf("load session from redis: %w", err)
	}
	if err := json.Unmarshal(data, &rec); err != nil {
		return rec, false, fmt.Errorf("session record in redis: %w", err)
	}
	return rec, true, nil
}

// Delete implements SessionStore.
func (s *RedisSessions) Delete(ctx context.Context, id string, ttl time.Duration) error {
	if err := deleteScript.Run(ctx, s.client, []string{s.key(id)}, endedMark, ttl.Milliseconds(), sessionsEnded, id).Err(); err != nil {
		return fmt.Errorf("delete session in redis: %w", err)
	}
	return nil
}

// Ended implements SessionStore. A message published while the
// connection is down is lost (the client reconnects and subscribes again
// by itself).
func (s *RedisSessions) Ended(ctx context.Context, ended func(id string)) (io.Closer, error) {
	ps := s.client.Subscribe(ctx, sessionsEnded)
	if _, err := ps.Receive(ctx); err != nil {
		ps.Close()
		return nil, fmt.Errorf("follow ended sessions in redis: %w", err)
	}
	sub := &endedSessions{ps: ps, done: make(chan struct{})}
	ch := ps.Channel()
	go func() {
		defer close(sub.done)
		for m := range ch {
			ended(m.Payload)
		}
	}()
	return sub, nil
}

// endedSessions is a subscription to the channel of ended sessions.
type endedSessions struct {
	ps   *redis.PubSub
	done chan struct{}
	once sync.Once
}

// Close ends the subscription and waits until its callback is no longer
// running.
func (e *endedSessions) Close() error {
	var err error
	e.once.Do(func() { err = e.ps.Close() })
	<-e.done
	return err
}
