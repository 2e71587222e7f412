package tokens

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Store keeps issued tokens by digest. Implementations are safe for
// concurrent use, and times come back at microsecond precision in UTC.
// Errors never include a caller-supplied ID, which may be a mistyped
// secret.
type Store interface {
	// Put stores t under d. t.ID must be d.ID(); a digest or ID that is
	// already stored is an error, never an overwrite.
	Put(ctx context.Context, d Digest, t Token) error
	// Get returns the token stored under d, or ErrUnknown.
	Get(ctx context.Context, d Digest) (Token, error)
	// List returns every token, sorted by Created then ID.
	List(ctx context.Context) ([]Token, error)
	// Find returns the tokens stored under the public IDs ids, keyed by
	// ID. An ID with no token, or whose token cannot be read whole, is
	// left out: a caller asking whether it may still be used finds that
	// it may not. An error means the store could not be asked.
	Find(ctx context.Context, ids []string) (map[string]Token, error)
	// Revoke marks the token with public ID id revoked at at. It returns
	// ErrUnknown when there is no such token. Revoking a revoked token
	// succeeds and keeps the first revocation time.
	Revoke(ctx context.Context, id string, at time.Time) error
}

var (
	_ Store = (*MemoryStore)(nil)
	_ Store = (*SQLiteStore)(nil)
)

// errDuplicate is returned by Put for a digest or ID already stored. With
// 256-bit secrets it means a bug (the same digest put twice), not bad luck.
var errDuplicate = errors.New("token already stored")

// checkPut is the validation both stores apply before writing.
func checkPut(d Digest, t Token) error {
	if t.ID != d.ID() {
		return errors.New("store token: ID does not match digest")
	}
	if t.Created.IsZero() {
		return errors.New("store token: no creation time")
	}
	return nil
}

// normalize returns t with its times as stores return them.
func normalize(t Token) Token {
	t.Created = storedTime(t.Created)
	t.Expires = storedTime(t.Expires)
	t.Revoked = storedTime(t.Revoked)
	return t
}

// MemoryStore is a Store that lives only as long as the process, for
// tests and benchmarks.
type MemoryStore struct {
	mu     sync.RWMutex
	byHash map[Digest]Token
	byID   map[string]Digest
}

// NewMemoryStore returns an empty MemoryStore.
func NewMemoryStore() *MemoryStore {
	return &MemoryStore{byHash: map[Digest]Token{}, byID: map[string]Digest{}}
}

// Put implements Store.
func (m *MemoryStore) Put(ctx context.Context, d Digest, t Token) error {
	if err := checkPut(d, t); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.byHash[d]; ok {
		return fmt.Errorf("store token %s: %w", t.ID, errDuplicate)
	}
	if _, ok := m.byID[t.ID]; ok {
		return fmt.Errorf("store token %s: %w", t.ID, errDuplicate)
	}
	m.byHash[d] = normalize(t)
	m.byID[t.ID] = d
	return nil
}

// Get implements Store.
func (m *MemoryStore) Get(ctx context.Context, d Digest) (Token, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	t, ok := m.byHash[d]
	if !ok {
		return Token{}, ErrUnknown
	}
	return t, nil
}

// List implements Store.
func (m *MemoryStore) List(ctx context.Context) ([]Token, error) {
	m.mu.RLock()
	out := make([]Token, 0, len(m.byHash))
	for _, t := range m.byHash {
		out = append(out, t)
	}
	m.mu.RUnlock()
	slices.SortFunc(out, func(a, b Token) int {
		return cmp.Or(a.Created.Compare(b.Created), cmp.Compare(a.ID, b.ID))
	})
	return out, nil
}

// Find implements Store.
func (m *MemoryStore) Find(ctx context.Context, ids []string) (map[string]Token, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := make(map[string]Token, len(ids))
	for _, id := range ids {
		if d, ok := m.byID[id]; ok {
			out[id] = m.byHash[d]
		}
	}
	return out, nil
}

// Revoke implements Store.
func (m *MemoryStore) Revoke(ctx context.Context, id string, at time.Time) error {
	if at.IsZero() {
		return errors.New("revoke token: no revocation time")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	d, ok := m.byID[id]
	if !ok {
		return ErrUnknown
	}
	t := m.byHash[d]
	if t.Revoked.IsZero() {
		t.Revoked = storedTime(at)
		m.byHash[d] = t
	}
	return nil
}
