// Package signout ends console sessions for good: a session cookie works
// only while its session is on the list of live sessions, from sign-in
// until its operator signs out or the cookie expires. A copied cookie is
// of no use after sign-out, and a store that loses its data (a Redis
// restarted without persistence, or failed over to a replica that lagged)
// signs every operator out, rather than letting signed-out cookies work
// again: the list says which sessions live, not which ended.
//
// The list is kept where the gateway keeps its other state: in the
// embedded SQLite database in standalone mode, so that it survives a
// restart, and in Redis when replicas share one, so that a session begun
// on one replica works on all, and signing out on one signs out on all.
// Memory is for tests and for a console without a store. Each session is
// remembered until its cookie expires.
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

// A List records live sessions by id.
type List interface {
	// Add records that the session id began, and lives until until (its
	// cookie's expiry), when the list may forget it.
	Add(ctx context.Context, id string, until time.Time) error
	// Remove ends the session id: its operator signed out. Removing an
	// id not on the list is no error.
	Remove(ctx context.Context, id string) error
	// Has reports whether the session id is live: added, not removed,
	// and its until not passed. An error means the answer is unknown.
	Has(ctx context.Context, id string) (bool, error)
}

var (
	_ List = (*Memory)(nil)
	_ List = (*SQLite)(nil)
	_ List = (*Redis)(nil)
)

var (
	errEmptyID = errors.New("console session: empty session id")
	errNoUntil = errors.New("console session: no time until which the session lives")
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
	if until.After(now) {
		m.ids[id] = until
	}
	return nil
}

// Remove forgets id.
func (m *Memory) Remove(_ context.Context, id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.ids, id)
	return nil
}

// Has reports whether id is recorded and its until has not passed.
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
	_, err := db.Exec(`CREATE TABLE IF NOT EXISTS console_sessions (
		id    TEXT PRIMARY KEY,
		until INTEGER NOT NULL
	)`)
	if err != nil {
		return nil, fmt.Errorf("create console_sessions table: %w", err)
	}
	// console_signouts held the sessions signed out, when the list was of
	// those: it has no use now.
	if _, err := db.Exec(`DROP TABLE IF EXISTS console_signouts`); err != nil {
		return nil, fmt.Errorf("drop console_signouts table: %w", err)
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
		return fmt.Errorf("record console session: %w", err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `DELETE FROM console_sessions WHERE until <= ?`, now); err != nil {
		return fmt.Errorf("record console session: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT OR REPLACE INTO console_sessions (id, until) VALUES (?, ?)`,
		id, until.UnixMilli()); err != nil {
		return fmt.Errorf("record console session: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("record console session: %w", err)
	}
	return nil
}

// Remove deletes id's row.
func (s *SQLite) Remove(ctx context.Context, id string) error {
	if _, err := s.db.ExecContext(ctx, `DELETE FROM console_sessions WHERE id = ?`, id); err != nil {
		return fmt.Errorf("end console session: %w", err)
	}
	return nil
}

// Has reports whether id is recorded and its until has not passed.
func (s *SQLite) Has(ctx context.Context, id string) (bool, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM console_sessions WHERE id = ? AND until > ?`,
		id, s.now().UnixMilli()).Scan(&n)
	if err != nil {
		return false, fmt.Errorf("read console sessions: %w", err)
	}
	return n > 0, nil
}

// Redis is a List in the Redis replicas share: one key per live session,
// which Redis deletes when the session expires.
type Redis struct {
	client redis.UniversalClient
	prefix string
}

// DefaultRedisPrefix starts every key.
const DefaultRedisPrefix = "amg:console:session:"

// NewRedis returns the List in client's Redis.
func NewRedis(client redis.UniversalClient) *Redis {
	return &Redis{client: client, prefix: DefaultRedisPrefix}
}

// Add records id until until, on Redis's clock. An until already past
// makes Redis delete the key at once, as it should: that session's cookie
// has expired.
func (r *Redis) Add(ctx context.Context, id string, until time.Time) error {
	if err := check(id, until); err != nil {
		return err
	}
	if err := r.client.Do(ctx, "SET", r.prefix+id, 1, "PXAT", until.UnixMilli()).Err(); err != nil {
		return fmt.Errorf("record console session in redis: %w", err)
	}
	return nil
}

// Remove deletes id's key.
func (r *Redis) Remove(ctx context.Context, id string) error {
	if err := r.client.Del(ctx, r.prefix+id).Err(); err != nil {
		return fmt.Errorf("end console session in redis: %w", err)
	}
	return nil
}

// Has reports whether id's key exists.
func (r *Redis) Has(ctx context.Context, id string) (bool, error) {
	n, err := r.client.Exists(ctx, r.prefix+id).Result()
	if err != nil {
		return false, fmt.Errorf("read console sessions from redis: %w", err)
	}
	return n > 0, nil
}
