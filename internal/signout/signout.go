// Package signout remembers the console sessions operators signed out of,
// so that a session cookie stops working when its operator signs out and
// not only when it expires: a copied cookie is of no use after sign-out.
//
// The list is kept where the gateway keeps its other state: in the
// embedded SQLite database in standalone mode, so that it survives a
// restart, and in Redis when replicas share one, so that signing out on
// one replica signs out on all. Memory is for tests and for a console
// without a store. Each session is remembered until its cookie expires.
package signout

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// A List records signed-out sessions by id.
type List interface {
	// Add records that the session id was signed out. It may forget the
	// id once until has passed: its cookie is refused from then on
	// anyway.
	Add(ctx context.Context, id string, until time.Time) error
	// Has reports whether the session id was signed out and its until
	// has not passed. An error means the answer is unknown.
	Has(ctx context.Context, id string) (bool, error)
}

var (
	_ List = (*Memory)(nil)
	_ List = (*SQLite)(nil)
	_ List = (*Redis)(nil)
)

var (
	errEmptyID = errors.New("sign-out: empty session id")
	errNoUntil = errors.New("sign-out: no time until which to remember the session")
)

// check refuses what no List can record.
func check(id string, until time.Time) error {
	switch {
	case id == "":
		return errEmptyID
	case until.IsZero():
		return errNoUntil
	}
	return nil
}

// Memory is a List in this process's memory.
type Memory struct {
	mu  sync.Mutex
	ids map[string]time.Time
	now func() time.Time
}

// NewMemory returns an empty List; now is its clock (nil: time.Now).
func NewMemory(now func() time.Time) *Memory {
	if now == nil {
		now = time.Now
	}
	return &Memory{ids: map[string]time.Time{}, now: now}
}

// Add records id until until, and forgets the ids whose time has passed.
func (m *Memory) Add(_ context.Context, id string, until time.Time) error {
	if err := check(id, until); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	for k, u := range m.ids {
		if !u.After(now) {
			delete(m.ids, k)
		}
	}
	if until.After(now) && until.After(m.ids[id]) {
		m.ids[id] = until
	}
	return nil
}

// Has reports whether id was added and its until has not passed.
func (m *Memory) Has(_ context.Context, id string) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	u, ok := m.ids[id]
	return ok && u.After(m.now()), nil
}

// SQLite is a List in the gateway's embedded database.
type SQLite struct {
	db  *sql.DB
	now func() time.Time
}

// NewSQLite returns the List in db, creating its table if needed; now is
// its clock (nil: time.Now).
func NewSQLite(db *sql.DB, now func() time.Time) (*SQLite, error) {
	if now == nil {
		now = time.Now
	}
	_, err := db.Exec(`CREATE TABLE IF NOT EXISTS console_signouts (
		id    TEXT PRIMARY KEY,
		until INTEGER NOT NULL
	)`)
	if err != nil {
		return nil, fmt.Errorf("create console_signouts table: %w", err)
	}
	return &SQLite{db: db, now: now}, nil
}

// Add records id until until, and forgets the ids whose time has passed.
func (s *SQLite) Add(ctx context.Context, id string, until time.Time) error {
	if err := check(id, until); err != nil {
		return err
	}
	now := s.now().UnixMilli()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("record sign-out: %w", err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `DELETE FROM console_signouts WHERE until <= ?`, now); err != nil {
		return fmt.Errorf("record sign-out: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO console_signouts (id, until) VALUES (?, ?)
		ON CONFLICT (id) DO UPDATE SET until = max(until, excluded.until)`, id, until.UnixMilli()); err != nil {
		return fmt.Errorf("record sign-out: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("record sign-out: %w", err)
	}
	return nil
}

// Has reports whether id was added and its until has not passed.
func (s *SQLite) Has(ctx context.Context, id string) (bool, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM console_signouts WHERE id = ? AND until > ?`,
		id, s.now().UnixMilli()).Scan(&n)
	if err != nil {
		return false, fmt.Errorf("read sign-outs: %w", err)
	}
	return n > 0, nil
}

// Redis is a List in the Redis replicas share: one key per session, which
// Redis deletes when the session would have expired.
type Redis struct {
	client redis.UniversalClient
	prefix string
}

// DefaultRedisPrefix starts every key.
const DefaultRedisPrefix = "amg:console:signedout:"

// NewRedis returns the List in client's Redis.
func NewRedis(client redis.UniversalClient) *Redis {
	return &Redis{client: client, prefix: DefaultRedisPrefix}
}

// Add records id until until, on Redis's clock.
func (r *Redis) Add(ctx context.Context, id string, until time.Time) error {
	if err := check(id, until); err != nil {
		return err
	}
	// The key is created with until as its expiry, or has it moved later
	// (GT, Redis 7): a second sign-out never shortens the first. An until
	// already past makes Redis delete the key at once, as it should: that
	// session's cookie has expired.
	k, ms := r.prefix+id, until.UnixMilli()
	pipe := r.client.TxPipeline()
	pipe.Do(ctx, "SET", k, 1, "NX", "PXAT", ms)
	pipe.Do(ctx, "PEXPIREAT", k, ms, "GT")
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("record sign-out in redis: %w", err)
	}
	return nil
}

// Has reports whether id's key exists.
func (r *Redis) Has(ctx context.Context, id string) (bool, error) {
	n, err := r.client.Exists(ctx, r.prefix+id).Result()
	if err != nil {
		return false, fmt.Errorf("read sign-outs from redis: %w", err)
	}
	return n > 0, nil
}
