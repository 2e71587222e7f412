package tokens

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestSQLiteSurvivesRestart(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "amg.db")
	c := newClock()

	db := openDB(t, path)
	secret, tok := issue(t, newSQLiteStore(t, db), c, time.Hour)
	revokedSecret, revoked := issue(t, newSQLiteStore(t, db), c, 0)
	if err := newSQLiteStore(t, db).Revoke(ctx, revoked.ID, c.Now()); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	s := newSQLiteStore(t, openDB(t, path))
	a := NewAuthenticator(s, &AuthOptions{Now: c.Now})
	got, err := a.Authenticate(ctx, secret)
	if err != nil {
		t.Fatalf("after reopening: %v", err)
	}
	if diff := cmp.Diff(tok, got); diff != "" {
		t.Errorf("token after reopening (-issued +got):\n%s", diff)
	}
	if _, err := a.Authenticate(ctx, revokedSecret); !errors.Is(err, ErrRevoked) {
		t.Errorf("revoked token after reopening: %v, want ErrRevoked", err)
	}
}

// Two handles on one file stand for two processes: `amg token revoke` and a
// running `amg serve`.
func TestSQLiteTwoHandles(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "amg.db")
	cli := newSQLiteStore(t, openDB(t, path))
	server := newSQLiteStore(t, openDB(t, path))
	c := newClock()

	t.Run("revocation seen within CacheTTL", func(t *testing.T) {
		secret, tok := issue(t, cli, c, 0)
		a := NewAuthenticator(server, &AuthOptions{Now: c.Now, CacheTTL: 5 * time.Second})
		if _, err := a.Authenticate(ctx, secret); err != nil {
			t.Fatal(err)
		}
		if err := cli.Revoke(ctx, tok.ID, c.Now()); err != nil {
			t.Fatal(err)
		}
		// Until CacheTTL has passed the server may still accept it: that
		// is the documented bound, not a wish.
		c.Advance(5*time.Second - 1)
		if _, err := a.Authenticate(ctx, secret); err != nil {
			t.Fatalf("inside CacheTTL: %v (expected the cached answer)", err)
		}
		c.Advance(1)
		if _, err := a.Authenticate(ctx, secret); !errors.Is(err, ErrRevoked) {
			t.Errorf("after CacheTTL: %v, want ErrRevoked", err)
		}
	})

	t.Run("revocation seen at once without a cache", func(t *testing.T) {
		secret, tok := issue(t, cli, c, 0)
		a := NewAuthenticator(server, &AuthOptions{Now: c.Now, CacheTTL: -1})
		if _, err := a.Authenticate(ctx, secret); err != nil {
			t.Fatal(err)
		}
		if err := cli.Revoke(ctx, tok.ID, c.Now()); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Authenticate(ctx, secret); !errors.Is(err, ErrRevoked) {
			t.Errorf("next request: %v, want ErrRevoked", err)
		}
	})

	t.Run("a new token works at once", func(t *testing.T) {
		a := NewAuthenticator(server, &AuthOptions{Now: c.Now, CacheTTL: time.Hour})
		secret, d, err := Generate()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := a.Authenticate(ctx, secret); !errors.Is(err, ErrUnknown) {
			t.Fatalf("before issue: %v, want ErrUnknown", err)
		}
		if err := cli.Put(ctx, d, Token{ID: d.ID(), Agent: "a", Role: "r", Created: c.Now()}); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Authenticate(ctx, secret); err != nil {
			t.Errorf("after issue: %v", err)
		}
	})

	t.Run("concurrent writers", func(t *testing.T) {
		var wg sync.WaitGroup
		for w, s := range []Store{cli, server, cli, server} {
			wg.Go(func() {
				for i := range 10 {
					_, tok, err := Issue(ctx, s, fmt.Sprintf("w%d", w), "r", 0, c.Now())
					if err != nil {
						t.Error(err)
						return
					}
					if i%3 == 0 {
						if err := s.Revoke(ctx, tok.ID, c.Now()); err != nil {
							t.Error(err)
						}
					}
				}
			})
		}
		wg.Wait()
		a, _ := cli.List(ctx)
		b, _ := server.List(ctx)
		if diff := cmp.Diff(a, b); diff != "" {
			t.Errorf("handles disagree (-cli +server):\n%s", diff)
		}
	})
}

func TestSQLiteStoreErrors(t *testing.T) {
	ctx := context.Background()
	db := openDB(t, filepath.Join(t.TempDir(), "amg.db"))
	s := newSQLiteStore(t, db)
	if _, err := NewSQLiteStore(db); err != nil {
		t.Errorf("second NewSQLiteStore on one database: %v", err)
	}
	secret, _, _ := Generate()
	db.Close()

	_, err := NewAuthenticator(s, nil).Authenticate(ctx, secret)
	if err == nil || errors.Is(err, ErrUnknown) {
		t.Fatalf("Authenticate on a closed database = %v, want a store error", err)
	}
	if strings.Contains(err.Error(), secret[len(Prefix):]) {
		t.Errorf("error %q contains the secret", err)
	}
	if _, err := NewSQLiteStore(db); err == nil {
		t.Error("NewSQLiteStore on a closed database succeeded")
	}
	if _, err := s.List(ctx); err == nil {
		t.Error("List on a closed database succeeded")
	}
	if err := s.Revoke(ctx, "0123456789abcdef", time.Now()); err == nil || errors.Is(err, ErrUnknown) {
		t.Errorf("Revoke on a closed database = %v, want a store error", err)
	}
}

func BenchmarkAuthenticateSQLiteUncached(b *testing.B) {
	ctx := context.Background()
	s := newSQLiteStore(b, openDB(b, filepath.Join(b.TempDir(), "amg.db")))
	c := newClock()
	secret, _ := issue(b, s, c, 0)
	a := NewAuthenticator(s, &AuthOptions{Now: c.Now, CacheTTL: -1})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.Authenticate(ctx, secret); err != nil {
			b.Fatal(err)
		}
	}
}
