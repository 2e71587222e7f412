package tokens

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/amgateway/amg/internal/testclock"
)

func newClock() *testclock.Clock { return testclock.New(time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)) }

// countingStore counts Get calls, to tell cache hits from store reads.
type countingStore struct {
	Store
	gets atomic.Int64
}

func (s *countingStore) Get(ctx context.Context, d Digest) (Token, error) {
	s.gets.Add(1)
	return s.Store.Get(ctx, d)
}

var errStoreDown = errors.New("store down")

type failingStore struct{ Store }

func (failingStore) Put(context.Context, Digest, Token) error { return errStoreDown }
func (failingStore) Get(context.Context, Digest) (Token, error) {
	return Token{}, errStoreDown
}
func (failingStore) Revoke(context.Context, string, time.Time) error { return errStoreDown }

// issue stores a token issued at c's time and returns its secret.
func issue(t testing.TB, s Store, c *testclock.Clock, ttl time.Duration) (string, Token) {
	t.Helper()
	secret, tok, err := Issue(context.Background(), s, "ci-bot", "notion_read", ttl, c.Now())
	if err != nil {
		t.Fatal(err)
	}
	return secret, tok
}

func TestAuthenticate(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	s := NewMemoryStore()
	secret, tok := issue(t, s, c, 0)
	a := NewAuthenticator(s, &AuthOptions{Now: c.Now})
	got, err := a.Authenticate(ctx, secret)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(tok, got); diff != "" {
		t.Errorf("Authenticate (-want +got):\n%s", diff)
	}
}

func TestAuthenticateMalformed(t *testing.T) {
	secret, d, _ := Generate()
	body := secret[len(Prefix):]
	digest := hex.EncodeToString(d[:])
	tests := []struct {
		name, in string
	}{
		{"empty", ""},
		{"prefix only", Prefix},
		{"no prefix", body},
		{"wrong prefix", "amx_" + body},
		{"upper-case prefix", "AMG_" + body},
		{"other vendor", "ghp_" + body},
		{"short", secret[:len(secret)-1]},
		{"long", secret + "0"},
		{"upper-case hex", Prefix + strings.ToUpper(body)},
		{"not hex", Prefix + "g" + body[1:]},
		{"base64 character", Prefix + "+" + body[1:]},
		{"leading space", " " + secret[:len(secret)-1]},
		{"trailing space", secret + " "},
		{"trailing newline", secret + "\n"},
		{"inner NUL", secret[:20] + "\x00" + secret[21:]},
		{"non-ASCII", secret[:len(secret)-2] + "é"},
		{"the digest itself", digest},
		{"bearer scheme", "Bearer " + secret},
		{"two tokens", secret + "," + secret},
	}
	a := NewAuthenticator(NewMemoryStore(), nil)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := a.Authenticate(context.Background(), tt.in)
			if !errors.Is(err, ErrMalformed) {
				t.Errorf("Authenticate = %v, want ErrMalformed", err)
			}
			if tt.in != "" && strings.Contains(err.Error(), tt.in) {
				t.Errorf("error %q echoes the input", err)
			}
		})
	}
}

func TestAuthenticateUnknown(t *testing.T) {
	s := NewMemoryStore()
	c := newClock()
	secret, _ := issue(t, s, c, 0)
	d, _ := Parse(secret)
	other, _, _ := Generate()
	tests := []struct{ name, in string }{
		{"never issued", other},
		// A stolen database holds digests; one dressed up as a token must
		// not authenticate.
		{"digest with prefix", Prefix + hex.EncodeToString(d[:])},
	}
	a := NewAuthenticator(s, &AuthOptions{Now: c.Now})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := a.Authenticate(context.Background(), tt.in)
			if !errors.Is(err, ErrUnknown) {
				t.Errorf("Authenticate = %v, want ErrUnknown", err)
			}
			if strings.Contains(err.Error(), tt.in[len(Prefix):]) {
				t.Errorf("error %q echoes the token", err)
			}
		})
	}
}

func TestAuthenticateExpired(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	s := &countingStore{Store: NewMemoryStore()}
	secret, _ := issue(t, s, c, time.Hour)
	// The cache outlives the token, so the expired answer below comes from
	// a cached entry: expiry must be checked on every call.
	a := NewAuthenticator(s, &AuthOptions{Now: c.Now, CacheTTL: 2 * time.Hour})

	c.Advance(time.Hour - time.Nanosecond)
	if _, err := a.Authenticate(ctx, secret); err != nil {
		t.Fatalf("just before expiry: %v", err)
	}
	c.Advance(time.Nanosecond)
	tok, err := a.Authenticate(ctx, secret)
	if !errors.Is(err, ErrExpired) {
		t.Fatalf("at expiry: %v, want ErrExpired", err)
	}
	if tok.Agent != "ci-bot" {
		t.Errorf("expired token not returned for audit: %+v", tok)
	}
	if n := s.gets.Load(); n != 1 {
		t.Errorf("%d store reads, want 1 (the second call is a cache hit)", n)
	}
}

func TestAuthenticateRevokedInStore(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	s := NewMemoryStore()
	secret, tok := issue(t, s, c, 0)
	if err := s.Revoke(ctx, tok.ID, c.Now()); err != nil {
		t.Fatal(err)
	}
	a := NewAuthenticator(s, &AuthOptions{Now: c.Now})
	got, err := a.Authenticate(ctx, secret)
	if !errors.Is(err, ErrRevoked) {
		t.Fatalf("Authenticate = %v, want ErrRevoked", err)
	}
	if got.ID != tok.ID || got.Revoked.IsZero() {
		t.Errorf("revoked token not returned for audit: %+v", got)
	}
}

func TestAuthenticateCache(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	s := &countingStore{Store: NewMemoryStore()}
	secret, tok := issue(t, s, c, 0)

	t.Run("hit within CacheTTL, read again after", func(t *testing.T) {
		s.gets.Store(0)
		a := NewAuthenticator(s, &AuthOptions{Now: c.Now, CacheTTL: 10 * time.Second})
		steps := []struct {
			advance time.Duration
			reads   int64
		}{
			{0, 1},
			{0, 1},
			{10*time.Second - 1, 1},
			{1, 2},
			{time.Second, 2},
			{-time.Minute, 3}, // the clock went back: age unknown, read again
		}
		for i, st := range steps {
			c.Advance(st.advance)
			if _, err := a.Authenticate(ctx, secret); err != nil {
				t.Fatalf("step %d: %v", i, err)
			}
			if n := s.gets.Load(); n != st.reads {
				t.Errorf("step %d: %d store reads, want %d", i, n, st.reads)
			}
		}
	})

	t.Run("default CacheTTL is one second", func(t *testing.T) {
		s.gets.Store(0)
		a := NewAuthenticator(s, &AuthOptions{Now: c.Now})
		a.Authenticate(ctx, secret)
		c.Advance(time.Second - 1)
		a.Authenticate(ctx, secret)
		if n := s.gets.Load(); n != 1 {
			t.Errorf("%d store reads within 1s, want 1", n)
		}
		c.Advance(1)
		a.Authenticate(ctx, secret)
		if n := s.gets.Load(); n != 2 {
			t.Errorf("%d store reads after 1s, want 2", n)
		}
	})

	t.Run("negative CacheTTL disables caching", func(t *testing.T) {
		s.gets.Store(0)
		a := NewAuthenticator(s, &AuthOptions{Now: c.Now, CacheTTL: -1})
		for range 3 {
			if _, err := a.Authenticate(ctx, secret); err != nil {
				t.Fatal(err)
			}
		}
		if n := s.gets.Load(); n != 3 {
			t.Errorf("%d store reads, want 3", n)
		}
	})

	t.Run("unknown tokens are not cached", func(t *testing.T) {
		s.gets.Store(0)
		a := NewAuthenticator(s, &AuthOptions{Now: c.Now, CacheTTL: time.Hour})
		late, d, _ := Generate()
		if _, err := a.Authenticate(ctx, late); !errors.Is(err, ErrUnknown) {
			t.Fatalf("before issue: %v, want ErrUnknown", err)
		}
		// Issued by another process a moment later: works at once.
		if err := s.Put(ctx, d, Token{ID: d.ID(), Agent: "late", Role: "r", Created: c.Now()}); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Authenticate(ctx, late); err != nil {
			t.Errorf("after issue: %v", err)
		}
		if len(a.cache) != 1 {
			t.Errorf("cache holds %d entries, want 1", len(a.cache))
		}
	})

	t.Run("revoked locally: at once, despite the cache", func(t *testing.T) {
		a := NewAuthenticator(s, &AuthOptions{Now: c.Now, CacheTTL: time.Hour})
		if _, err := a.Authenticate(ctx, secret); err != nil {
			t.Fatal(err)
		}
		if err := a.Revoke(ctx, tok.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Authenticate(ctx, secret); !errors.Is(err, ErrRevoked) {
			t.Errorf("after Revoke: %v, want ErrRevoked", err)
		}
		if err := a.Revoke(ctx, "0123456789abcdef"); !errors.Is(err, ErrUnknown) {
			t.Errorf("Revoke of unknown ID = %v, want ErrUnknown", err)
		}
	})
}

func TestAuthenticateCacheBound(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	s := NewMemoryStore()
	a := NewAuthenticator(s, &AuthOptions{Now: c.Now, CacheTTL: time.Hour, CacheSize: 5})
	var secrets []string
	for range 20 {
		secret, _ := issue(t, s, c, 0)
		secrets = append(secrets, secret)
	}
	for round := range 2 {
		for _, secret := range secrets {
			if _, err := a.Authenticate(ctx, secret); err != nil {
				t.Fatal(err)
			}
			if n := len(a.cache); n > 5 {
				t.Fatalf("round %d: cache holds %d entries, bound is 5", round, n)
			}
		}
	}
	for range 1000 {
		garbage, _, _ := Generate()
		a.Authenticate(ctx, garbage)
	}
	if n := len(a.cache); n != 5 {
		t.Errorf("after unknown tokens, cache holds %d entries, want 5", n)
	}
	if got := NewAuthenticator(s, nil).size; got != 10000 {
		t.Errorf("default CacheSize = %d, want 10000", got)
	}
}

// blockingStore holds the first Get after reading, until released, so a
// test can revoke in the middle of a lookup.
type blockingStore struct {
	Store
	once     sync.Once
	read     chan struct{}
	released chan struct{}
}

func (s *blockingStore) Get(ctx context.Context, d Digest) (Token, error) {
	t, err := s.Store.Get(ctx, d)
	s.once.Do(func() {
		close(s.read)
		<-s.released
	})
	return t, err
}

func TestRevokeDuringLookup(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	s := &blockingStore{Store: NewMemoryStore(), read: make(chan struct{}), released: make(chan struct{})}
	secret, tok := issue(t, s, c, 0)
	a := NewAuthenticator(s, &AuthOptions{Now: c.Now, CacheTTL: time.Hour})

	done := make(chan error)
	go func() {
		_, err := a.Authenticate(ctx, secret)
		done <- err
	}()
	<-s.read // the lookup has read the token as active
	if err := a.Revoke(ctx, tok.ID); err != nil {
		t.Fatal(err)
	}
	close(s.released)
	if err := <-done; err != nil {
		t.Fatalf("lookup that began before the revocation: %v", err)
	}
	// What that lookup read must not have been cached.
	if _, err := a.Authenticate(ctx, secret); !errors.Is(err, ErrRevoked) {
		t.Errorf("after Revoke: %v, want ErrRevoked", err)
	}
}

func TestAuthenticateStoreError(t *testing.T) {
	ctx := context.Background()
	secret, _, _ := Generate()
	a := NewAuthenticator(failingStore{}, nil)
	_, err := a.Authenticate(ctx, secret)
	if !errors.Is(err, errStoreDown) {
		t.Fatalf("Authenticate = %v, want the store error wrapped", err)
	}
	for _, sentinel := range []error{ErrMalformed, ErrUnknown, ErrExpired, ErrRevoked} {
		if errors.Is(err, sentinel) {
			t.Errorf("store error reported as %v", sentinel)
		}
	}
	d := sha256.Sum256([]byte(secret))
	if text := err.Error(); strings.Contains(text, secret[len(Prefix):]) || strings.Contains(text, hex.EncodeToString(d[:])) {
		t.Errorf("error %q contains the secret or full digest", text)
	}
	if len(a.cache) != 0 {
		t.Error("a failed lookup was cached")
	}
	if err := a.Revoke(ctx, "0123456789abcdef"); !errors.Is(err, errStoreDown) {
		t.Errorf("Revoke = %v, want the store error", err)
	}
}

func TestAuthenticateConcurrent(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	s := NewMemoryStore()
	a := NewAuthenticator(s, &AuthOptions{Now: c.Now, CacheSize: 8})
	type issued struct {
		secret string
		tok    Token
	}
	var all []issued
	for range 16 {
		secret, tok := issue(t, s, c, 0)
		all = append(all, issued{secret, tok})
	}
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 200 {
				x := all[(w+i)%len(all)]
				got, err := a.Authenticate(ctx, x.secret)
				if err != nil && !errors.Is(err, ErrRevoked) {
					t.Error(err)
				}
				if got.ID != x.tok.ID {
					t.Errorf("token %s authenticated as %s", x.tok.ID, got.ID)
				}
				if w == 0 && i%50 == 0 {
					a.Revoke(ctx, x.tok.ID)
				}
				if i%20 == 0 {
					c.Advance(time.Second)
				}
			}
		})
	}
	wg.Wait()
}

func BenchmarkAuthenticateCached(b *testing.B) {
	ctx := context.Background()
	c := newClock()
	s := NewMemoryStore()
	secret, _ := issue(b, s, c, time.Hour)
	a := NewAuthenticator(s, &AuthOptions{Now: c.Now, CacheTTL: time.Hour})
	if _, err := a.Authenticate(ctx, secret); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.Authenticate(ctx, secret); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAuthenticateCachedParallel(b *testing.B) {
	ctx := context.Background()
	s := NewMemoryStore()
	c := newClock()
	secret, _ := issue(b, s, c, 0)
	// time.Now, not the test clock, whose mutex would be what is measured.
	a := NewAuthenticator(s, &AuthOptions{CacheTTL: time.Hour})
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := a.Authenticate(ctx, secret); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
