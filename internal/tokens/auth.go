package tokens

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Defaults for AuthOptions.
const (
	defaultCacheTTL  = time.Second
	defaultCacheSize = 10000
)

// AuthOptions tune an Authenticator. A nil *AuthOptions is the zero value.
type AuthOptions struct {
	// Now is the clock expiry and cache age are measured with; nil means
	// time.Now.
	Now func() time.Time
	// CacheTTL is how long a token read from the store is reused before
	// it is read again; 0 means 1s, negative disables caching. It bounds
	// how late a revocation made by another process (the CLI, another
	// replica) is seen here when no one calls Forget for it.
	// Revocations made through this Authenticator's Revoke apply at once
	// regardless.
	CacheTTL time.Duration
	// CacheSize bounds the number of cached tokens; 0 means 10000. Only
	// tokens found in the store are cached, so presenting random
	// well-formed tokens cannot grow memory; the bound caps what a large
	// population of real tokens can use.
	CacheSize int
}

// Authenticator resolves presented tokens to their agent and role. It is
// safe for concurrent use; the gateway calls Authenticate on every request.
type Authenticator struct {
	store Store
	now   func() time.Time
	ttl   time.Duration // < 0: no caching
	size  int

	mu sync.RWMutex
	// gen counts revocations made or heard of here (Revoke, Forget). A
	// lookup that started before one must not put what it read into the
	// cache, or a revoked token could be served from the cache for
	// another CacheTTL.
	gen   uint64
	cache map[Digest]cached
}

type cached struct {
	tok Token
	at  time.Time // when it was read from the store
}

// NewAuthenticator returns an Authenticator that looks tokens up in s.
func NewAuthenticator(s Store, opts *AuthOptions) *Authenticator {
	if opts == nil {
		opts = &AuthOptions{}
	}
	a := &Authenticator{store: s, now: opts.Now, ttl: opts.CacheTTL, size: opts.CacheSize}
	if a.now == nil {
		a.now = time.Now
	}
	if a.ttl == 0 {
		a.ttl = defaultCacheTTL
	}
	if a.size <= 0 {
		a.size = defaultCacheSize
	}
	if a.ttl > 0 {
		a.cache = make(map[Digest]cached)
	}
	return a
}

// Authenticate returns the token secret stands for if it may be used now.
// It fails with ErrMalformed, ErrUnknown, ErrExpired, ErrRevoked or a
// wrapped store error; callers deny on any error. On ErrExpired and
// ErrRevoked the token is returned too, so the attempt can be audited
// under its agent.
//
// Expiry is checked on every call, cached or not. Unknown tokens are never
// cached, so a token issued a moment ago by another process works at once.
func (a *Authenticator) Authenticate(ctx context.Context, secret string) (Token, error) {
	d, err := Parse(secret)
	if err != nil {
		return Token{}, err
	}
	now := a.now()
	var gen uint64
	if a.cache != nil {
		a.mu.RLock()
		c, ok := a.cache[d]
		gen = a.gen
		a.mu.RUnlock()
		// A clock that went backwards makes the entry's age unknowable,
		// so it counts as stale.
		if ok && !now.Before(c.at) && now.Sub(c.at) < a.ttl {
			return c.tok, c.tok.check(now)
		}
	}
	t, err := a.store.Get(ctx, d)
	if errors.Is(err, ErrUnknown) {
		return Token{}, ErrUnknown
	}
	if err != nil {
		return Token{}, fmt.Errorf("authenticate token %s: %w", d.ID(), err)
	}
	if a.cache != nil {
		a.put(d, t, now, gen)
	}
	return t, t.check(now)
}

func (a *Authenticator) put(d Digest, t Token, now time.Time, gen uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.gen != gen {
		return
	}
	if _, ok := a.cache[d]; !ok && len(a.cache) >= a.size {
		// Evict an arbitrary entry (map order is randomised). Anything
		// evicted is only read from the store again, so no policy is
		// needed beyond keeping memory bounded.
		for k := range a.cache {
			delete(a.cache, k)
			break
		}
	}
	a.cache[d] = cached{tok: t, at: now}
}

// Revoke revokes the token with public ID id in the store and drops it
// from this Authenticator's cache, so it stops working here at once.
// ErrUnknown means there is no such token.
func (a *Authenticator) Revoke(ctx context.Context, id string) error {
	err := a.store.Revoke(ctx, id, a.now())
	// Even if the store failed: dropping an entry only costs a lookup.
	a.Forget(id)
	return err
}

// Forget drops the token with public ID id from the cache, so its next
// use reads the store. It is how a revocation made elsewhere (another
// replica, the CLI) takes effect here at once instead of within CacheTTL:
// pass it to RedisStore.Subscribe. IDs not cached, or not IDs at all, are
// ignored.
func (a *Authenticator) Forget(id string) {
	if a.cache == nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	// A lookup in flight may have read the token before the revocation;
	// bumping gen keeps it from caching that.
	a.gen++
	if want, ok := parseID(id); ok {
		for d := range a.cache {
			if [idLen / 2]byte(d[:idLen/2]) == want {
				delete(a.cache, d)
			}
		}
	}
}
