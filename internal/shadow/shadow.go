// Package shadow counts the calls of roles in shadow mode and their
// would-be denials, per role per day (UTC), so the switch to enforce can
// be decided from data.
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

// Count is what one role did in shadow mode on one day.
type Count struct {
	Role string
	Day  string // YYYY-MM-DD, UTC
	// N is the would-be denials: the calls enforcement would have denied
	// or made wait for approval.
	N int64
	// Calls is every call decided in shadow mode, denied or not: without
	// them, a day without denials says nothing.
	Calls int64
}

// add returns b with a's counts added: b's role and day.
func add(a, b Count) Count {
	b.N += a.N
	b.Calls += a.Calls
	return b
}

// Day is the UTC day a time falls on, as counts are keyed.
func Day(t time.Time) string { return t.UTC().Format(time.DateOnly) }

func sortCounts(cs []Count) {
	slices.SortFunc(cs, func(a, b Count) int { return cmp.Or(cmp.Compare(a.Role, b.Role), cmp.Compare(a.Day, b.Day)) })
}

// Memory counts in one process's memory.
type Memory struct {
	mu     sync.Mutex
	counts map[[2]string]Count
}

// NewMemory returns an empty in-memory counter.
func NewMemory() *Memory { return &Memory{counts: map[[2]string]Count{}} }

// Add counts calls decided in shadow mode for role at t, denials of them
// would-be denials.
func (m *Memory) Add(_ context.Context, role string, t time.Time, calls, denials int64) error {
	if calls == 0 && denials == 0 {
		return nil
	}
	k := [2]string{role, Day(t)}
	m.mu.Lock()
	m.counts[k] = add(m.counts[k], Count{Role: k[0], Day: k[1], N: denials, Calls: calls})
	m.mu.Unlock()
	return nil
}

// Counts returns the counts of the days from from to to, inclusive,
// sorted by role and day. Days without calls are absent.
func (m *Memory) Counts(_ context.Context, from, to time.Time) ([]Count, error) {
	lo, hi := Day(from), Day(to)
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Count
	for k, c := range m.counts {
		if k[1] >= lo && k[1] <= hi {
			out = append(out, c)
		}
	}
	sortCounts(out)
	return out, nil
}

// SQLite keeps counts in the embedded database, shared by every process
// that opens it.
type SQLite struct{ db *sql.DB }

// NewSQLite returns a counter on db, creating its table, or adding the
// calls column to a table made before it was counted.
func NewSQLite(db *sql.DB) (*SQLite, error) {
	_, err := db.Exec(`CREATE TABLE IF NOT EXISTS shadow_denies (
		role  TEXT NOT NULL,
		day   TEXT NOT NULL,
		n     INTEGER NOT NULL,
		calls INTEGER NOT NULL DEFAULT 0,
		PRIMARY KEY (role, day)
	)`)
	if err != nil {
		return nil, fmt.Errorf("create shadow_denies table: %w", err)
	}
	if _, err := db.Exec(`CREATE TABLE IF NOT EXISTS shadow_writes (id TEXT PRIMARY KEY, at INTEGER NOT NULL)`); err != nil {
		return nil, fmt.Errorf("create shadow_writes table: %w", err)
	}
	hasCalls := func() (bool, error) {
		var n int
		err := db.QueryRow(`SELECT COUNT(*) FROM pragma_table_info('shadow_denies') WHERE name = 'calls'`).Scan(&n)
		return n > 0, err
	}
	has, err := hasCalls()
	if err != nil {
		return nil, fmt.Errorf("read shadow_denies columns: %w", err)
	}
	if !has {
		if _, err := db.Exec(`ALTER TABLE shadow_denies ADD COLUMN calls INTEGER NOT NULL DEFAULT 0`); err != nil {
			// Another process (the CLI, another replica's start) may have
			// added it meanwhile.
			if has, _ := hasCalls(); !has {
				return nil, fmt.Errorf("add calls to shadow_denies: %w", err)
			}
		}
	}
	return &SQLite{db: db}, nil
}

// Add counts calls decided in shadow mode for role at t, denials of them
// would-be denials.
func (s *SQLite) Add(ctx context.Context, role string, t time.Time, calls, denials int64) error {
	if calls == 0 && denials == 0 {
		return nil
	}
	if _, err := s.db.ExecContext(ctx, addCounts, role, Day(t), denials, calls); err != nil {
		return fmt.Errorf("count shadow calls: %w", err)
	}
	return nil
}

const addCounts = `INSERT INTO shadow_denies (role, day, n, calls) VALUES (?, ?, ?, ?)
	ON CONFLICT (role, day) DO UPDATE SET n = n + excluded.n, calls = calls + excluded.calls`

var _ onceAdder = (*SQLite)(nil)

// AddOnce is Add under id, which a write sent again keeps: a write whose
// context ended as it committed reports an error though it was stored,
// and a Batch sends it again. The ids of the last writeMemory are kept
// beside the counts, in the same transaction.
func (s *SQLite) AddOnce(ctx context.Context, id, role string, t time.Time, calls, denials int64) error {
	if calls == 0 && denials == 0 {
		return nil
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("count shadow calls: %w", err)
	}
	defer tx.Rollback()
	now := time.Now().Unix()
	res, err := tx.ExecContext(ctx, `INSERT INTO shadow_writes (id, at) VALUES (?, ?) ON CONFLICT (id) DO NOTHING`, id, now)
	if err != nil {
		return fmt.Errorf("count shadow calls: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil || n == 0 {
		return err // stored before, or the driver cannot tell: nothing is added
	}
	if _, err := tx.ExecContext(ctx, addCounts, role, Day(t), denials, calls); err != nil {
		return fmt.Errorf("count shadow calls: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM shadow_writes WHERE at < ?`, now-int64(writeMemory/time.Second)); err != nil {
		return fmt.Errorf("count shadow calls: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("count shadow calls: %w", err)
	}
	return nil
}

// Applied reports which of the writes ids the database added (and
// remembers).
func (s *SQLite) Applied(ctx context.Context, ids []string) (map[string]bool, error) {
	applied := make(map[string]bool, len(ids))
	for _, id := range ids {
		var n int
		if err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM shadow_writes WHERE id = ?`, id).Scan(&n); err != nil {
			return nil, fmt.Errorf("read shadow writes: %w", err)
		}
		applied[id] = n > 0
	}
	return applied, nil
}

// Counts returns the counts of the days from from to to, inclusive,
// sorted by role and day.
func (s *SQLite) Counts(ctx context.Context, from, to time.Time) ([]Count, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT role, day, n, calls FROM shadow_denies WHERE day >= ? AND day <= ? ORDER BY role, day`,
		Day(from), Day(to))
	if err != nil {
		return nil, fmt.Errorf("read shadow counts: %w", err)
	}
	defer rows.Close()
	var out []Count
	for rows.Next() {
		var c Count
		if err := rows.Scan(&c.Role, &c.Day, &c.N, &c.Calls); err != nil {
			return nil, fmt.Errorf("read shadow counts: %w", err)
		}
		out = append(out, c)
	}
	return out, rows.Err()
}
