// Package shadow counts the would-be denials of roles in shadow mode, per
// role per day (UTC), so the switch to enforce can be decided from data.
package shadow

import (
	"cmp"
	"context"
	"database/sql"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Count is the number of would-be denials of one role on one day.
type Count struct {
	Role string
	Day  string // YYYY-MM-DD, UTC
	N    int64
}

// Day is the UTC day a time falls on, as counts are keyed.
func Day(t time.Time) string { return t.UTC().Format(time.DateOnly) }

func sortCounts(cs []Count) {
	slices.SortFunc(cs, func(a, b Count) int { return cmp.Or(cmp.Compare(a.Role, b.Role), cmp.Compare(a.Day, b.Day)) })
}

// Memory counts in one process's memory.
type Memory struct {
	mu     sync.Mutex
	counts map[[2]string]int64
}

// NewMemory returns an empty in-memory counter.
func NewMemory() *Memory { return &Memory{counts: map[[2]string]int64{}} }

// Inc counts one would-be denial of role at t.
func (m *Memory) Inc(_ context.Context, role string, t time.Time) error {
	m.mu.Lock()
	m.counts[[2]string{role, Day(t)}]++
	m.mu.Unlock()
	return nil
}

// Counts returns the counts of the days from from to to, inclusive,
// sorted by role and day. Days without denials are absent.
func (m *Memory) Counts(_ context.Context, from, to time.Time) ([]Count, error) {
	lo, hi := Day(from), Day(to)
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Count
	for k, n := range m.counts {
		if k[1] >= lo && k[1] <= hi {
			out = append(out, Count{Role: k[0], Day: k[1], N: n})
		}
	}
	sortCounts(out)
	return out, nil
}

// SQLite keeps counts in the embedded database, shared by every process
// that opens it.
type SQLite struct{ db *sql.DB }

// NewSQLite returns a counter on db, creating its table.
func NewSQLite(db *sql.DB) (*SQLite, error) {
	_, err := db.Exec(`CREATE TABLE IF NOT EXISTS shadow_denies (
		role TEXT NOT NULL,
		day  TEXT NOT NULL,
		n    INTEGER NOT NULL,
		PRIMARY KEY (role, day)
	)`)
	if err != nil {
		return nil, fmt.Errorf("create shadow_denies table: %w", err)
	}
	return &SQLite{db: db}, nil
}

// Inc counts one would-be denial of role at t.
func (s *SQLite) Inc(ctx context.Context, role string, t time.Time) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO shadow_denies (role, day, n) VALUES (?, ?, 1)
		ON CONFLICT (role, day) DO UPDATE SET n = n + 1`, role, Day(t))
	if err != nil {
		return fmt.Errorf("count shadow deny: %w", err)
	}
	return nil
}

// Counts returns the counts of the days from from to to, inclusive,
// sorted by role and day.
func (s *SQLite) Counts(ctx context.Context, from, to time.Time) ([]Count, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT role, day, n FROM shadow_denies WHERE day >= ? AND day <= ? ORDER BY role, day`, Day(from), Day(to))
	if err != nil {
		return nil, fmt.Errorf("read shadow denies: %w", err)
	}
	defer rows.Close()
	var out []Count
	for rows.Next() {
		var c Count
		if err := rows.Scan(&c.Role, &c.Day, &c.N); err != nil {
			return nil, fmt.Errorf("read shadow denies: %w", err)
		}
		out = append(out, c)
	}
	return out, rows.Err()
}
