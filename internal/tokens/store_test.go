package tokens

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/amgateway/amg/internal/store"
)

func TestMemoryStore(t *testing.T) {
	testStore(t, func(t *testing.T) Store { return NewMemoryStore() })
}

func TestSQLiteStore(t *testing.T) {
	testStore(t, func(t *testing.T) Store { return newSQLiteStore(t, openDB(t, filepath.Join(t.TempDir(), "amg.db"))) })
}

func openDB(t testing.TB, path string) *sql.DB {
	t.Helper()
	db, err := store.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func newSQLiteStore(t testing.TB, db *sql.DB) *SQLiteStore {
	t.Helper()
	s, err := NewSQLiteStore(db)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// t0 has nanoseconds and a zone other than UTC, so the contract test sees
// both stores normalise times the same way.
var t0 = time.Date(2026, 3, 14, 15, 9, 26, 535897932, time.FixedZone("CET", 3600))

// newToken returns a fresh digest and a token for it created at created.
func newToken(t testing.TB, agent string, created time.Time) (Digest, Token) {
	t.Helper()
	_, d, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	return d, Token{ID: d.ID(), Agent: agent, Role: "reader", Created: created}
}

// testStore is the contract every Store implementation meets.
func testStore(t *testing.T, newStore func(t *testing.T) Store) {
	ctx := context.Background()

	t.Run("put and get", func(t *testing.T) {
		s := newStore(t)
		d, tok := newToken(t, "ci-bot", t0)
		tok.Expires = t0.Add(90 * time.Minute)
		if err := s.Put(ctx, d, tok); err != nil {
			t.Fatal(err)
		}
		got, err := s.Get(ctx, d)
		if err != nil {
			t.Fatal(err)
		}
		want := Token{
			ID: d.ID(), Agent: "ci-bot", Role: "reader",
			Created: time.Date(2026, 3, 14, 14, 9, 26, 535897000, time.UTC),
			Expires: time.Date(2026, 3, 14, 15, 39, 26, 535897000, time.UTC),
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("Get (-want +got):\n%s", diff)
		}
		if got.Created.Location() != time.UTC || got.Expires.Location() != time.UTC {
			t.Errorf("times not in UTC: %v, %v", got.Created, got.Expires)
		}
		if !got.Revoked.IsZero() {
			t.Errorf("Revoked = %v, want zero", got.Revoked)
		}
	})

	t.Run("no expiry", func(t *testing.T) {
		s := newStore(t)
		d, tok := newToken(t, "a", t0)
		if err := s.Put(ctx, d, tok); err != nil {
			t.Fatal(err)
		}
		got, err := s.Get(ctx, d)
		if err != nil {
			t.Fatal(err)
		}
		if !got.Expires.IsZero() {
			t.Errorf("Expires = %v, want zero", got.Expires)
		}
	})

	t.Run("unknown digest", func(t *testing.T) {
		s := newStore(t)
		d, _ := newToken(t, "a", t0)
		if _, err := s.Get(ctx, d); !errors.Is(err, ErrUnknown) {
			t.Errorf("Get = %v, want ErrUnknown", err)
		}
	})

	t.Run("bad puts", func(t *testing.T) {
		s := newStore(t)
		d, tok := newToken(t, "a", t0)
		if err := s.Put(ctx, d, tok); err != nil {
			t.Fatal(err)
		}
		other, _ := newToken(t, "b", t0)
		sameID := other
		copy(sameID[:], d[:idLen/2]) // same public ID, different digest
		tests := []struct {
			name string
			d    Digest
			tok  Token
			dup  bool
		}{
			{"same digest", d, tok, true},
			{"same ID", sameID, Token{ID: sameID.ID(), Agent: "b", Role: "r", Created: t0}, true},
			{"ID does not match digest", other, tok, false},
			{"no creation time", other, Token{ID: other.ID(), Agent: "b", Role: "r"}, false},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				err := s.Put(ctx, tt.d, tt.tok)
				if err == nil {
					t.Fatal("Put succeeded")
				}
				if errors.Is(err, errDuplicate) != tt.dup {
					t.Errorf("Put = %v; duplicate: %v, want %v", err, errors.Is(err, errDuplicate), tt.dup)
				}
			})
		}
		got, err := s.Get(ctx, d)
		if err != nil || got.Agent != "a" {
			t.Errorf("after refused puts, Get = %+v, %v; want the first token", got, err)
		}
	})

	t.Run("list order", func(t *testing.T) {
		s := newStore(t)
		if got, err := s.List(ctx); err != nil || len(got) != 0 {
			t.Fatalf("List of empty store = %v, %v", got, err)
		}
		var want []Token
		for i, created := range []time.Time{t0.Add(time.Hour), t0, t0, t0.Add(-time.Hour), t0} {
			d, tok := newToken(t, fmt.Sprint("agent", i), created)
			if err := s.Put(ctx, d, tok); err != nil {
				t.Fatal(err)
			}
			want = append(want, normalize(tok))
		}
		sortTokens(want)
		got, err := s.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("List (-want +got):\n%s", diff)
		}
	})

	t.Run("revoke", func(t *testing.T) {
		s := newStore(t)
		d, tok := newToken(t, "a", t0)
		keep, keepTok := newToken(t, "b", t0)
		for _, p := range []struct {
			d Digest
			t Token
		}{{d, tok}, {keep, keepTok}} {
			if err := s.Put(ctx, p.d, p.t); err != nil {
				t.Fatal(err)
			}
		}
		first := t0.Add(time.Minute)
		if err := s.Revoke(ctx, tok.ID, first); err != nil {
			t.Fatal(err)
		}
		if err := s.Revoke(ctx, tok.ID, first.Add(time.Hour)); err != nil {
			t.Errorf("second Revoke = %v, want nil", err)
		}
		got, err := s.Get(ctx, d)
		if err != nil {
			t.Fatal(err)
		}
		if !got.Revoked.Equal(storedTime(first)) {
			t.Errorf("Revoked = %v, want the first time %v", got.Revoked, storedTime(first))
		}
		if got, _ := s.Get(ctx, keep); !got.Revoked.IsZero() {
			t.Errorf("other token revoked too: %+v", got)
		}
		list, err := s.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var revoked int
		for _, l := range list {
			if !l.Revoked.IsZero() {
				revoked++
			}
		}
		if revoked != 1 {
			t.Errorf("List shows %d revoked, want 1: %+v", revoked, list)
		}
	})

	t.Run("find", func(t *testing.T) {
		s := newStore(t)
		d1, tok1 := newToken(t, "a", t0)
		d2, tok2 := newToken(t, "b", t0.Add(time.Second))
		for _, p := range []struct {
			d Digest
			t Token
		}{{d1, tok1}, {d2, tok2}} {
			if err := s.Put(ctx, p.d, p.t); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Revoke(ctx, tok2.ID, t0.Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		want1, _ := s.Get(ctx, d1)
		want2, _ := s.Get(ctx, d2)
		// IDs never stored, or not IDs at all, are left out, as is a
		// repeated one's second mention.
		got, err := s.Find(ctx, []string{tok1.ID, tok2.ID, "0123456789abcdef", "", tok1.ID + "' OR 1=1 --", tok1.ID})
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(map[string]Token{tok1.ID: want1, tok2.ID: want2}, got); diff != "" {
			t.Errorf("Find (-want +got):\n%s", diff)
		}
		if got, err := s.Find(ctx, nil); err != nil || len(got) != 0 {
			t.Errorf("Find(nil) = %v, %v; want none", got, err)
		}
	})

	t.Run("revoke unknown", func(t *testing.T) {
		s := newStore(t)
		d, tok := newToken(t, "a", t0)
		if err := s.Put(ctx, d, tok); err != nil {
			t.Fatal(err)
		}
		secret, _, _ := Generate()
		for _, id := range []string{"0123456789abcdef", "", strings.ToUpper(tok.ID), tok.ID[:15], secret, tok.ID + "' OR 1=1 --"} {
			err := s.Revoke(ctx, id, t0)
			if !errors.Is(err, ErrUnknown) {
				t.Errorf("Revoke(%q) = %v, want ErrUnknown", id, err)
			}
			if id != "" && strings.Contains(err.Error(), id) {
				t.Errorf("Revoke error %q echoes the ID", err)
			}
		}
		if got, _ := s.Get(ctx, d); !got.Revoked.IsZero() {
			t.Errorf("token revoked by a bad ID: %+v", got)
		}
	})

	t.Run("concurrent use", func(t *testing.T) {
		s := newStore(t)
		const workers, each = 8, 10
		shared, sharedTok := newToken(t, "shared", t0)
		if err := s.Put(ctx, shared, sharedTok); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		errs := make(chan error, workers*each*4)
		for w := range workers {
			wg.Go(func() {
				for i := range each {
					d, tok := newToken(t, fmt.Sprintf("w%d-%d", w, i), t0.Add(time.Duration(i)*time.Second))
					if err := s.Put(ctx, d, tok); err != nil {
						errs <- err
						continue
					}
					if _, err := s.Get(ctx, d); err != nil {
						errs <- err
					}
					if i%2 == 0 {
						if err := s.Revoke(ctx, tok.ID, t0.Add(time.Hour)); err != nil {
							errs <- err
						}
					}
					// Everyone races to revoke the same token.
					if err := s.Revoke(ctx, sharedTok.ID, t0.Add(time.Duration(w*each+i+1)*time.Second)); err != nil {
						errs <- err
					}
					if _, err := s.List(ctx); err != nil {
						errs <- err
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		list, err := s.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != workers*each+1 {
			t.Errorf("List has %d tokens, want %d", len(list), workers*each+1)
		}
		var revoked int
		for _, l := range list {
			if !l.Revoked.IsZero() {
				revoked++
			}
		}
		if want := workers*each/2 + 1; revoked != want {
			t.Errorf("%d revoked, want %d", revoked, want)
		}
		got, err := s.Get(ctx, shared)
		if err != nil {
			t.Fatal(err)
		}
		if got.Revoked.IsZero() {
			t.Error("shared token not revoked")
		}
	})
}

func sortTokens(ts []Token) {
	slices.SortFunc(ts, func(a, b Token) int {
		if c := a.Created.Compare(b.Created); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
}
