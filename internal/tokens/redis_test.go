package tokens

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/amgateway/amg/internal/redistest"
)

// The contract runs on one server, each subtest under its own prefix, so
// the subtests share nothing.
func TestRedisStore(t *testing.T) {
	srv := redistest.Start(t)
	client := srv.Client()
	testStore(t, func(t *testing.T) Store {
		return NewRedisStore(client, &RedisOptions{Prefix: "test:{" + t.Name() + "}:"})
	})
}

// A Put whose reply comes late is sent again by go-redis: the second
// finds the token its first stored, and the Put succeeds, rather than
// reporting a duplicate (amg token issue would report a failure for a
// token it stored, whose secret no one has).
func TestRedisPutRetried(t *testing.T) {
	ctx := context.Background()
	p := redistest.Start(t).Proxy()
	client := p.Client()
	s := NewRedisStore(client, nil)
	// Another token first, so that Redis has the script: its first run
	// is refused unknown, and sent again whole.
	if _, _, err := Issue(ctx, s, "warm-up", "r", 0, t0); err != nil {
		t.Fatal(err)
	}
	d, tok := newToken(t, "retried-bot", t0)
	p.DelayReply("retried-bot", 2*redistest.ProxyReadTimeout)
	if err := s.Put(ctx, d, tok); err != nil {
		t.Errorf("a Put sent twice: %v", err)
	}
	if got, err := s.Get(ctx, d); err != nil || got.Agent != "retried-bot" {
		t.Errorf("Get = %+v, %v", got, err)
	}
	// Another Put of the same token is still a duplicate.
	if err := s.Put(ctx, d, tok); !errors.Is(err, errDuplicate) {
		t.Errorf("a second Put = %v, want a duplicate", err)
	}
}

// Two stores on two clients stand for two replicas racing to store one
// digest: exactly one wins.
func TestRedisPutIsAtomicAcrossReplicas(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	replicas := []Store{NewRedisStore(srv.Client(), nil), NewRedisStore(srv.Client(), nil)}
	for round := range 20 {
		d, tok := newToken(t, "a", t0)
		var stored, dup atomic.Int64
		var wg sync.WaitGroup
		for w := range 8 {
			wg.Go(func() {
				err := replicas[w%2].Put(ctx, d, tok)
				switch {
				case err == nil:
					stored.Add(1)
				case errors.Is(err, errDuplicate):
					dup.Add(1)
				default:
					t.Error(err)
				}
			})
		}
		wg.Wait()
		if stored.Load() != 1 || dup.Load() != 7 {
			t.Fatalf("round %d: %d stored, %d refused as duplicates; want 1 and 7", round, stored.Load(), dup.Load())
		}
	}
	a, errA := replicas[0].List(ctx)
	b, errB := replicas[1].List(ctx)
	if errA != nil || errB != nil || len(a) != 20 || len(b) != 20 {
		t.Errorf("List: %d tokens (%v) and %d tokens (%v), want 20 on both", len(a), errA, len(b), errB)
	}
}

// replica is one AMG replica's view of the tokens: its own client, store
// and Authenticator.
type replica struct {
	store *RedisStore
	auth  *Authenticator
}

func newReplica(t *testing.T, srv *redistest.Server, subscribe bool) replica {
	t.Helper()
	s := NewRedisStore(srv.Client(), nil)
	// The cache outlives the test, so only the revocation message can
	// make a replica notice in time.
	a := NewAuthenticator(s, &AuthOptions{CacheTTL: time.Hour})
	if subscribe {
		sub, err := s.Subscribe(context.Background(), a.Forget)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { sub.Close() })
	}
	return replica{s, a}
}

func TestRedisRevocationAcrossReplicas(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	a := newReplica(t, srv, true)
	b := newReplica(t, srv, true)
	deaf := newReplica(t, srv, false)

	for _, via := range []string{"Authenticator", "Store"} {
		t.Run("revoked via "+via, func(t *testing.T) {
			secret, tok, err := Issue(ctx, a.store, "ci-bot", "reader", 0, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range []replica{b, deaf} {
				if _, err := r.auth.Authenticate(ctx, secret); err != nil {
					t.Fatal(err)
				}
			}
			if via == "Authenticator" {
				err = a.auth.Revoke(ctx, tok.ID)
			} else {
				// As `amg token revoke` does, with no Authenticator.
				err = a.store.Revoke(ctx, tok.ID, time.Now())
			}
			if err != nil {
				t.Fatal(err)
			}
			waitFor(t, "replica B to reject the revoked token", func() bool {
				_, err := b.auth.Authenticate(ctx, secret)
				return errors.Is(err, ErrRevoked)
			})
			// A replica that did not subscribe serves its cached answer:
			// the message, not the cache TTL, is what B acted on.
			if _, err := deaf.auth.Authenticate(ctx, secret); err != nil {
				t.Errorf("unsubscribed replica: %v, want its cached answer", err)
			}
		})
	}
}

func TestRedisSubscription(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	s := NewRedisStore(srv.Client(), nil)
	other := NewRedisStore(srv.Client(), &RedisOptions{Prefix: "other:"})
	ids := make(chan string, 10)
	sub, err := s.Subscribe(ctx, func(id string) { ids <- id })
	if err != nil {
		t.Fatal(err)
	}

	_, tok, err := Issue(ctx, s, "a", "r", 0, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	_, otherTok, err := Issue(ctx, other, "a", "r", 0, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := other.Revoke(ctx, otherTok.ID, time.Now()); err != nil {
		t.Fatal(err)
	}
	// Garbage on the channel is not an ID and is not passed on.
	if err := srv.Client().Publish(ctx, DefaultRedisPrefix+"revoked", "not an id").Err(); err != nil {
		t.Fatal(err)
	}
	if err := s.Revoke(ctx, tok.ID, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := s.Revoke(ctx, "0123456789abcdef", time.Now()); !errors.Is(err, ErrUnknown) {
		t.Fatalf("Revoke of unknown ID = %v, want ErrUnknown", err)
	}
	// Revoking again announces again, in case the first message was lost.
	if err := s.Revoke(ctx, tok.ID, time.Now()); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		select {
		case id := <-ids:
			if id != tok.ID {
				t.Errorf("message %d: %q, want %q (and nothing from another prefix)", i, id, tok.ID)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("message %d not delivered", i)
		}
	}

	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}
	if err := sub.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	// After Close, onRevoke is never called again.
	if err := s.Revoke(ctx, tok.ID, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := srv.Client().Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	select {
	case id := <-ids:
		t.Errorf("delivered %q after Close", id)
	default:
	}
}

// Find answers for the tokens it can read: one whose entry something
// outside AMG deleted or overwrote is left out (not live, to its caller),
// without hiding the others. Revoke of one whose entry is gone fails.
func TestRedisFindAroundDamagedEntries(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	s := NewRedisStore(srv.Client(), nil)
	var ids []string
	var digests []Digest
	for _, agent := range []string{"intact", "deleted", "wrong-type", "garbled", "id-deleted"} {
		secret, tok, err := Issue(ctx, s, agent, "r", 0, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		d, _ := Parse(secret)
		ids, digests = append(ids, tok.ID), append(digests, d)
	}
	c := srv.Client()
	c.Del(ctx, s.tokenKey(digests[1]))
	c.Del(ctx, s.tokenKey(digests[2]))
	c.LPush(ctx, s.tokenKey(digests[2]), "x")
	c.HSet(ctx, s.tokenKey(digests[3]), "created", "yesterday")
	c.Del(ctx, s.idKey(ids[4]))
	got, err := s.Find(ctx, ids)
	if err != nil {
		t.Fatalf("Find around damaged entries: %v", err)
	}
	if len(got) != 1 || got[ids[0]].Agent != "intact" {
		t.Errorf("Find = %+v, want only the intact token", got)
	}
	// Revoking a token whose entry is gone says so, rather than report a
	// revocation that nothing records.
	if err := s.Revoke(ctx, ids[1], time.Now()); !errors.Is(err, errIndexHole) {
		t.Errorf("Revoke of a deleted token: %v, want %v", err, errIndexHole)
	}
}

// Redis down fails closed: Authenticate returns a store error, never a
// token or ErrUnknown. Redis back is service again, and the subscription
// resumes by itself.
func TestRedisStoreDown(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	a := newReplica(t, srv, true)
	secret, tok, err := Issue(ctx, a.store, "a", "r", 0, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	// A fresh Authenticator has nothing cached.
	auth := NewAuthenticator(a.store, nil)

	srv.Stop()
	got, err := auth.Authenticate(ctx, secret)
	if err == nil || errors.Is(err, ErrUnknown) || got != (Token{}) {
		t.Fatalf("Authenticate with Redis down = %+v, %v; want a store error", got, err)
	}
	if strings.Contains(err.Error(), secret[len(Prefix):]) {
		t.Errorf("error %q contains the secret", err)
	}
	if _, err := a.store.List(ctx); err == nil {
		t.Error("List with Redis down succeeded")
	}
	if got, err := a.store.Find(ctx, []string{tok.ID}); err == nil {
		t.Errorf("Find with Redis down = %v, want a store error", got)
	}
	if err := a.store.Revoke(ctx, tok.ID, time.Now()); err == nil || errors.Is(err, ErrUnknown) {
		t.Errorf("Revoke with Redis down = %v, want a store error", err)
	}
	d, fresh := newToken(t, "b", t0)
	if err := a.store.Put(ctx, d, fresh); err == nil || errors.Is(err, errDuplicate) {
		t.Errorf("Put with Redis down = %v, want a store error", err)
	}
	if _, err := a.store.Subscribe(ctx, func(string) {}); err == nil {
		t.Error("Subscribe with Redis down succeeded")
	}

	// The restarted server is empty (the test server does not persist).
	srv.Restart()
	waitFor(t, "Put to work after a restart", func() bool {
		return a.store.Put(ctx, d, fresh) == nil
	})
	if got, err := a.store.Get(ctx, d); err != nil || got.Agent != "b" {
		t.Errorf("Get after restart = %+v, %v", got, err)
	}
	secret, tok, err = Issue(ctx, a.store, "c", "r", 0, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.auth.Authenticate(ctx, secret); err != nil {
		t.Fatal(err)
	}
	// The subscription reconnects on its own; revoking is idempotent and
	// announces each time, so repeat it until the message gets through.
	waitFor(t, "the subscription to resume", func() bool {
		if err := a.store.Revoke(ctx, tok.ID, time.Now()); err != nil {
			return false
		}
		time.Sleep(50 * time.Millisecond)
		_, err := a.auth.Authenticate(ctx, secret)
		return errors.Is(err, ErrRevoked)
	})
}

func BenchmarkAuthenticateRedisUncached(b *testing.B) {
	ctx := context.Background()
	srv := redistest.Start(b)
	s := NewRedisStore(srv.Client(), nil)
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

// waitFor polls cond until it holds, failing the test after a generous
// bound so a broken implementation hangs no one. Nothing asserts how long
// it took.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
