// Package store opens the embedded SQLite database that standalone AMG keeps
// its state in.
//
// The database is one file that several processes use at once: `amg serve`
// reads tokens and approvals while the CLI issues and revokes them. Each
// package that keeps state there creates its own tables when it is
// constructed; this package only opens the file with settings that make that
// sharing safe.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

// busyTimeout is how long, in milliseconds, a connection waits for another
// process's write lock before failing. Writes are rare and short (issue,
// revoke, approve), so five seconds only runs out if something is stuck.
const busyTimeout = 5000

// Open opens (creating it if needed) the database at path. The parent
// directory is created with mode 0700 and the file with mode 0600, since
// the file holds token digests and approval payloads; existing ones keep
// their modes. The returned *sql.DB is safe for concurrent use and may be
// shared by every package that keeps state in the database.
func Open(path string) (*sql.DB, error) {
	if path == "" {
		return nil, errors.New("open database: empty path")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(abs), 0o700); err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	// SQLite would create the file with mode 0644 less the umask; create it
	// first so it never exists with wider permissions. SQLite gives the WAL
	// and shared-memory files the same mode as the database file.
	f, err := os.OpenFile(abs, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}

	db, err := sql.Open("sqlite", dsn(abs))
	if err != nil {
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	// Query now, so a file that is not a database, or a file system without
	// WAL support, fails here rather than on first use.
	var mode string
	if err := db.QueryRowContext(context.Background(), "PRAGMA journal_mode").Scan(&mode); err != nil {
		db.Close()
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	if !strings.EqualFold(mode, "wal") {
		db.Close()
		return nil, fmt.Errorf("open database %s: journal mode is %q, want wal (WAL needs a local file system)", path, mode)
	}
	return db, nil
}

// dsn builds the driver's data source name for an absolute path. The
// settings are per connection, so they go in the DSN, which the driver
// applies to every connection database/sql opens, not in a one-off Exec:
//
//   - WAL lets readers (the serving process) run while a writer (the CLI)
//     commits, and makes a commit visible to other processes at once.
//   - busy_timeout makes a writer wait for another process's lock instead
//     of failing with SQLITE_BUSY.
//   - _txlock=immediate takes the write lock when a read-write transaction
//     begins: a deferred transaction that reads and then writes can fail
//     with SQLITE_BUSY without waiting when another process wrote in
//     between. Read-only transactions still begin deferred.
func dsn(abs string) string {
	p := filepath.ToSlash(abs)
	if !strings.HasPrefix(p, "/") {
		p = "/" + p // a Windows drive letter: file:///C:/...
	}
	u := url.URL{Scheme: "file", Path: p}
	q := url.Values{}
	q.Set("_busy_timeout", fmt.Sprint(busyTimeout))
	q.Set("_journal_mode", "WAL")
	q.Set("_foreign_keys", "1")
	q.Set("_txlock", "immediate")
	// The escaped path has '?', '#' and '%' percent-encoded, so an odd
	// directory name cannot be read as URI parameters.
	return "file://" + u.EscapedPath() + "?" + q.Encode()
}
