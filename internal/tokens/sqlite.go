package tokens

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// SQLiteStore is a Store in the embedded database (see package store), so
// tokens survive restarts and a revocation made by `amg token revoke` is
// seen by a running `amg serve` on its next lookup.
type SQLiteStore struct {
	db *sql.DB
}

// The digest is the key agents are looked up by on every request; the ID
// is the key operators revoke by. Both are unique. Times are Unix
// microseconds; NULL means "never" (expires) or "not" (revoked).
const createTokens = `CREATE TABLE IF NOT EXISTS tokens (
	id      TEXT    NOT NULL PRIMARY KEY,
	digest  BLOB    NOT NULL UNIQUE,
	agent   TEXT    NOT NULL,
	role    TEXT    NOT NULL,
	created INTEGER NOT NULL,
	expires INTEGER,
	revoked INTEGER
) STRICT`

// NewSQLiteStore returns a Store backed by db, creating its table if
// needed. db is typically from store.Open and is shared with other
// packages; the caller closes it.
func NewSQLiteStore(db *sql.DB) (*SQLiteStore, error) {
	if _, err := db.ExecContext(context.Background(), createTokens); err != nil {
		return nil, fmt.Errorf("create tokens table: %w", err)
	}
	return &SQLiteStore{db: db}, nil
}

// Put implements Store.
func (s *SQLiteStore) Put(ctx context.Context, d Digest, t Token) error {
	if err := checkPut(d, t); err != nil {
		return err
	}
	t = normalize(t)
	_, err := s.db.ExecContext(ctx,
		`INSERT INTO tokens (id, digest, agent, role, created, expires, revoked) VALUES (?, ?, ?, ?, ?, ?, ?)`,
		t.ID, d[:], t.Agent, t.Role, t.Created.UnixMicro(), nullTime(t.Expires), nullTime(t.Revoked))
	if err != nil {
		if isUniqueViolation(err) {
			return fmt.Errorf("store token %s: %w", t.ID, errDuplicate)
		}
		return fmt.Errorf("store token %s: %w", t.ID, err)
	}
	return nil
}

// Get implements Store.
func (s *SQLiteStore) Get(ctx context.Context, d Digest) (Token, error) {
	row := s.db.QueryRowContext(ctx,
		`SELECT id, agent, role, created, expires, revoked FROM tokens WHERE digest = ?`, d[:])
	t, err := scanToken(row)
	if errors.Is(err, sql.ErrNoRows) {
		return Token{}, ErrUnknown
	}
	if err != nil {
		return Token{}, fmt.Errorf("read token %s: %w", d.ID(), err)
	}
	return t, nil
}

// List implements Store.
func (s *SQLiteStore) List(ctx context.Context) ([]Token, error) {
	rows, err := s.db.QueryContext(ctx,
		`SELECT id, agent, role, created, expires, revoked FROM tokens ORDER BY created, id`)
	if err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	defer rows.Close()
	var out []Token
	for rows.Next() {
		t, err := scanToken(rows)
		if err != nil {
			return nil, fmt.Errorf("list tokens: %w", err)
		}
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	return out, nil
}

// Find implements Store. It asks for findChunk IDs at a time, well under
// the bound SQLite sets on a statement's parameters.
func (s *SQLiteStore) Find(ctx context.Context, ids []string) (map[string]Token, error) {
	out := make(map[string]Token, len(ids))
	for chunk := range slices.Chunk(ids, findChunk) {
		args := make([]any, len(chunk))
		for i, id := range chunk {
			args[i] = id
		}
		q := `SELECT id, agent, role, created, expires, revoked FROM tokens WHERE id IN (?` +
			strings.Repeat(",?", len(chunk)-1) + `)`
		rows, err := s.db.QueryContext(ctx, q, args...)
		if err != nil {
			return nil, fmt.Errorf("find tokens: %w", err)
		}
		for rows.Next() {
			// A row that cannot be read is left out (see Store).
			if t, err := scanToken(rows); err == nil {
				out[t.ID] = t
			}
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, fmt.Errorf("find tokens: %w", err)
		}
	}
	return out, nil
}

const findChunk = 500

// Revoke implements Store.
func (s *SQLiteStore) Revoke(ctx context.Context, id string, at time.Time) error {
	if at.IsZero() {
		return errors.New("revoke token: no revocation time")
	}
	// One statement, so two processes revoking at once cannot both record
	// a time: coalesce keeps the first. SQLite counts a matched row as
	// changed even when coalesce leaves it as it was, so zero rows means
	// no such ID.
	res, err := s.db.ExecContext(ctx,
		`UPDATE tokens SET revoked = coalesce(revoked, ?) WHERE id = ?`, at.UnixMicro(), id)
	if err != nil {
		return fmt.Errorf("revoke token: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("revoke token: %w", err)
	}
	if n == 0 {
		return ErrUnknown
	}
	return nil
}

type scanner interface{ Scan(dest ...any) error }

func scanToken(row scanner) (Token, error) {
	var t Token
	var created int64
	var expires, revoked sql.NullInt64
	if err := row.Scan(&t.ID, &t.Agent, &t.Role, &created, &expires, &revoked); err != nil {
		return Token{}, err
	}
	t.Created = time.UnixMicro(created).UTC()
	if expires.Valid {
		t.Expires = time.UnixMicro(expires.Int64).UTC()
	}
	if revoked.Valid {
		t.Revoked = time.UnixMicro(revoked.Int64).UTC()
	}
	return t, nil
}

func nullTime(t time.Time) sql.NullInt64 {
	if t.IsZero() {
		return sql.NullInt64{}
	}
	return sql.NullInt64{Int64: t.UnixMicro(), Valid: true}
}

// isUniqueViolation reports whether err is SQLite refusing a second row
// with the same digest or ID, so Put can return the same error as the
// memory store.
func isUniqueViolation(err error) bool {
	var e *sqlite.Error
	if !errors.As(err, &e) {
		return false
	}
	return e.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE || e.Code() == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY
}
