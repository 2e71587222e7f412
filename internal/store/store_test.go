package store

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func open(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func TestOpenSettings(t *testing.T) {
	db := open(t, filepath.Join(t.TempDir(), "amg.db"))
	// Several connections, since the settings must hold on each one that
	// database/sql opens, not only the first.
	ctx := context.Background()
	var conns []*sql.Conn
	for range 3 {
		c, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	for i, c := range conns {
		got := map[string]string{}
		for _, p := range []string{"journal_mode", "busy_timeout", "foreign_keys"} {
			var v string
			if err := c.QueryRowContext(ctx, "PRAGMA "+p).Scan(&v); err != nil {
				t.Fatal(err)
			}
			got[p] = v
		}
		want := map[string]string{"journal_mode": "wal", "busy_timeout": "5000", "foreign_keys": "1"}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("connection %d pragmas (-want +got):\n%s", i, diff)
		}
		c.Close()
	}
}

func TestOpenPermissions(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("Unix permissions")
	}
	dir := filepath.Join(t.TempDir(), "data", "nested")
	path := filepath.Join(dir, "amg.db")
	db := open(t, path)
	if _, err := db.Exec("CREATE TABLE t (x INTEGER)"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	want := map[string]os.FileMode{
		filepath.Dir(dir): 0o700 | os.ModeDir,
		dir:               0o700 | os.ModeDir,
		path:              0o600,
		path + "-wal":     0o600,
		path + "-shm":     0o600,
	}
	got := map[string]os.FileMode{}
	for p := range want {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		got[p] = fi.Mode()
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("modes (-want +got):\n%s", diff)
	}
}

func TestOpenOddPath(t *testing.T) {
	// Characters that mean something in a URI must stay part of the name.
	dir := filepath.Join(t.TempDir(), "a dir?x=1#frag%41")
	path := filepath.Join(dir, "amg.db")
	db := open(t, path)
	if _, err := db.Exec("CREATE TABLE t (x INTEGER)"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Errorf("database not at the given path: %v", err)
	}
	entries, _ := os.ReadDir(filepath.Dir(dir))
	if len(entries) != 1 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("expected only %q beside it, found %q", filepath.Base(dir), names)
	}
}

func TestOpenSharedByTwoHandles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "amg.db")
	a := open(t, path)
	b := open(t, path)
	if _, err := a.Exec("CREATE TABLE n (w INTEGER, i INTEGER)"); err != nil {
		t.Fatal(err)
	}
	// Writers on both handles at once: busy_timeout and immediate
	// transactions make them wait for each other instead of failing.
	var wg sync.WaitGroup
	for w, db := range []*sql.DB{a, b, a, b} {
		wg.Go(func() {
			for i := range 25 {
				tx, err := db.Begin()
				if err != nil {
					t.Error(err)
					return
				}
				var n int
				if err := tx.QueryRow("SELECT count(*) FROM n").Scan(&n); err != nil {
					t.Error(err)
				}
				if _, err := tx.Exec("INSERT INTO n VALUES (?, ?)", w, i); err != nil {
					t.Error(err)
				}
				if err := tx.Commit(); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	var n int
	if err := b.QueryRow("SELECT count(*) FROM n").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 100 {
		t.Errorf("%d rows, want 100", n)
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	notDB := filepath.Join(dir, "notes.txt")
	if err := os.WriteFile(notDB, []byte(fmt.Sprintf("%0512d", 0)), 0o600); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, path string
	}{
		{"empty path", ""},
		{"not a database", notDB},
		{"parent is a file", filepath.Join(file, "amg.db")},
		{"path is a directory", dir},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db, err := Open(tt.path)
			if err == nil {
				db.Close()
				t.Fatal("Open succeeded")
			}
		})
	}
}
