package approval

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"

	"github.com/amgateway/amg/internal/redistest"
)

// hangGuard bounds every wait for something that should happen by
// itself; reaching it means the code under test hung.
const hangGuard = 10 * time.Second

var t0 = time.Date(2026, 11, 26, 9, 0, 0, 0, time.UTC)

// The contract runs on one server, each subtest under its own prefix, so
// the subtests share nothing.
func TestRedis(t *testing.T) {
	srv := redistest.Start(t)
	client := srv.Client()
	testStore(t, func(t *testing.T) Store {
		return NewRedis(client, &RedisOptions{Prefix: "test:{" + t.Name() + "}:"})
	})
}

func TestRedisForgets(t *testing.T) {
	srv := redistest.Start(t)
	// Redis expires keys on its own clock: the contract runs in real time.
	const retention = 600 * time.Millisecond
	testForgetting(t, NewRedis(srv.Client(), &RedisOptions{Retention: retention, PendingGrace: retention}), retention, time.Sleep)
}

func park(t *testing.T, s Store, body []byte) *Approval {
	t.Helper()
	a, err := New("dec-1", "bot", "editor", "notion", "delete_page", body, t0, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Create(context.Background(), a); err != nil {
		t.Fatal(err)
	}
	return a
}

type waited struct {
	a   *Approval
	err error
}

// waitAsync runs s.Wait on its own goroutine.
func waitAsync(ctx context.Context, s Store, id string) <-chan waited {
	ch := make(chan waited, 1)
	go func() {
		a, err := s.Wait(ctx, id)
		ch <- waited{a, err}
	}()
	return ch
}

// receive returns what a waitAsync delivers, failing if it never does.
func receive(t *testing.T, ch <-chan waited) waited {
	t.Helper()
	select {
	case w := <-ch:
		return w
	case <-time.After(hangGuard):
		t.Fatal("Wait did not return")
		return waited{}
	}
}

// eventually polls cond until it holds, failing the test at hangGuard.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(hangGuard)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// awaitWaits returns once n Waits on id, over the stores, listen on a
// live subscription: a Wait counted there hears a decision made from now
// on.
func awaitWaits(t *testing.T, id string, n int, stores ...*Redis) {
	t.Helper()
	eventually(t, fmt.Sprintf("%d Waits on %s", n, id), func() bool {
		got := 0
		for _, s := range stores {
			got += s.decisions.listening(id)
		}
		return got == n
	})
}

// listening counts the Waits on id that a decision made now would reach.
func (d *decisions) listening(id string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.sub == nil {
		return 0
	}
	select {
	case <-d.sub.live:
		return len(d.sub.waiters[id])
	default:
		return 0
	}
}

// subscribers counts the connections to c's server that are subscribed
// to anything.
func subscribers(c *redis.Client) (int, error) {
	list, err := c.ClientList(context.Background()).Result()
	return strings.Count(list, " flags=P"), err
}

// awaitSubscribers returns once n connections to c's server are
// subscribed to anything.
func awaitSubscribers(t *testing.T, c *redis.Client, n int) {
	t.Helper()
	eventually(t, fmt.Sprintf("%d subscribed connections", n), func() bool {
		got, err := subscribers(c)
		return err == nil && got == n
	})
}

// Body is stored byte for byte, whatever it holds, and every field comes
// back as it went in, from every method that returns an approval.
func TestRedisRoundTrip(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	client := srv.Client()
	s := NewRedis(client, nil)
	body := []byte("{\"a\":\"\x00\xff\xfe\r\n\"}  \x00")
	a := park(t, s, body)

	if n, err := client.Exists(ctx, DefaultRedisPrefix+"a:"+a.ID).Result(); err != nil || n != 1 {
		t.Errorf("no key under the default prefix: %d, %v", n, err)
	}
	got, err := s.Get(ctx, a.ID)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(a, got); d != "" {
		t.Errorf("Get differs from what was created (-want +got):\n%s", d)
	}

	at := time.Date(2026, 11, 26, 9, 30, 0, 123456789, time.FixedZone("CET", 3600))
	want := *a
	want.State, want.DecidedBy, want.Reason, want.DecidedAt = Approved, "alice", "ok ✓", at.UTC()
	got, err = s.Finish(ctx, a.ID, Approved, "alice", "ok ✓", at)
	if d := cmp.Diff(&want, got); err != nil || d != "" {
		t.Errorf("Finish: %v; (-want +got):\n%s", err, d)
	}
	want.State = Executed
	got, err = s.Execute(ctx, a.ID, a.Body)
	if d := cmp.Diff(&want, got); err != nil || d != "" {
		t.Errorf("Execute: %v; (-want +got):\n%s", err, d)
	}
	list, err := s.List(ctx, "")
	if d := cmp.Diff([]*Approval{&want}, list); err != nil || d != "" {
		t.Errorf("List: %v; (-want +got):\n%s", err, d)
	}
	if got, err := s.Wait(ctx, a.ID); err != nil || got.State != Executed {
		t.Errorf("Wait on a decided approval = %+v, %v; want it at once", got, err)
	}
}

// List orders by Created then ID across states, and filters by state.
func TestRedisListOrder(t *testing.T) {
	ctx := context.Background()
	s := NewRedis(redistest.Start(t).Client(), nil)
	mk := func(id string, created time.Time) *Approval {
		a := &Approval{ID: id, Created: created, Expires: created.Add(time.Hour), State: Pending}
		if err := s.Create(ctx, a); err != nil {
			t.Fatal(err)
		}
		return a
	}
	// Created out of order; b and c share a Created, so ID decides.
	d := mk("apr_d", t0.Add(2*time.Second))
	c := mk("apr_c", t0.Add(time.Second))
	b := mk("apr_b", t0.Add(time.Second))
	a := mk("apr_a", t0)
	if _, err := s.Finish(ctx, c.ID, Denied, "bob", "", t0); err != nil {
		t.Fatal(err)
	}
	ids := func(l []*Approval) (out []string) {
		for _, x := range l {
			out = append(out, x.ID)
		}
		return out
	}
	for _, tc := range []struct {
		state State
		want  []string
	}{
		{"", []string{a.ID, b.ID, c.ID, d.ID}},
		{Pending, []string{a.ID, b.ID, d.ID}},
		{Denied, []string{c.ID}},
		{Executed, nil},
	} {
		l, err := s.List(ctx, tc.state)
		if d := cmp.Diff(tc.want, ids(l)); err != nil || d != "" {
			t.Errorf("List(%q): %v; (-want +got):\n%s", tc.state, err, d)
		}
	}
}

// Two stores on two clients stand for two replicas: a decision through
// one releases the Waits on both.
func TestRedisWaitAcrossReplicas(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	srv := redistest.Start(t)
	admin := srv.Client()
	a, b := NewRedis(srv.Client(), nil), NewRedis(srv.Client(), nil)
	p := park(t, a, []byte(`{}`))

	waits := []<-chan waited{waitAsync(ctx, a, p.ID), waitAsync(ctx, a, p.ID), waitAsync(ctx, b, p.ID)}
	awaitWaits(t, p.ID, 3, a, b)
	if _, err := b.Finish(ctx, p.ID, Denied, "bob", "not today", t0); err != nil {
		t.Fatal(err)
	}
	for i, ch := range waits {
		w := receive(t, ch)
		if w.err != nil || w.a.State != Denied || w.a.DecidedBy != "bob" || w.a.Reason != "not today" {
			t.Errorf("Wait %d = %+v, %v; want the denial", i, w.a, w.err)
		}
	}
	awaitWaits(t, p.ID, 0, a, b)
	awaitSubscribers(t, admin, 0)

	if _, err := a.Wait(ctx, "apr_nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Wait on an unknown id: %v, want ErrNotFound", err)
	}
}

// A store's Waits listen on one connection, however many there are, and
// each hears its own approval's decision. A prefix holding glob
// characters is matched as itself.
func TestRedisWaitsShareAConnection(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	srv := redistest.Start(t)
	admin := srv.Client()
	s := NewRedis(srv.Client(), &RedisOptions{Prefix: `t:{[glob]*?\}:`})
	const n = 40
	parked := make([]*Approval, n)
	waits := make([]<-chan waited, n)
	for i := range n {
		parked[i] = park(t, s, []byte(`{}`))
		waits[i] = waitAsync(ctx, s, parked[i].ID)
	}
	twice := waitAsync(ctx, s, parked[0].ID)
	awaitWaits(t, parked[0].ID, 2, s)
	for _, p := range parked[1:] {
		awaitWaits(t, p.ID, 1, s)
	}
	if got, err := subscribers(admin); err != nil || got != 1 {
		t.Fatalf("%d Waits hold %d subscribed connections (%v), want 1", n+1, got, err)
	}

	for i, p := range parked {
		to := Approved
		if i%2 == 1 {
			to = Denied
		}
		if _, err := s.Finish(ctx, p.ID, to, "alice", "", t0); err != nil {
			t.Fatal(err)
		}
		if w := receive(t, waits[i]); w.err != nil || w.a.ID != p.ID || w.a.State != to {
			t.Fatalf("Wait %d = %+v, %v; want %s %s", i, w.a, w.err, p.ID, to)
		}
		if i == 0 {
			if w := receive(t, twice); w.err != nil || w.a.ID != p.ID || w.a.State != to {
				t.Fatalf("second Wait on %s = %+v, %v", p.ID, w.a, w.err)
			}
		}
	}
	awaitSubscribers(t, admin, 0)
}

// When the shared connection drops, every Wait on it ends with an error
// (a decision announced meanwhile would go unheard); the next Wait
// subscribes anew.
func TestRedisWaitsConnectionDropped(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	srv := redistest.Start(t)
	admin := srv.Client()
	s := NewRedis(srv.Client(), nil)
	p, q := park(t, s, []byte(`{}`)), park(t, s, []byte(`{}`))
	waits := []<-chan waited{waitAsync(ctx, s, p.ID), waitAsync(ctx, s, q.ID)}
	awaitWaits(t, p.ID, 1, s)
	awaitWaits(t, q.ID, 1, s)
	if err := admin.ClientKillByFilter(ctx, "TYPE", "pubsub").Err(); err != nil {
		t.Fatal(err)
	}
	for i, ch := range waits {
		if w := receive(t, ch); w.err == nil || errors.Is(w.err, context.DeadlineExceeded) {
			t.Errorf("Wait %d when its connection dropped = %+v, %v; want a Redis error", i, w.a, w.err)
		}
	}
	awaitSubscribers(t, admin, 0)

	again := waitAsync(ctx, s, p.ID)
	awaitWaits(t, p.ID, 1, s)
	if _, err := s.Finish(ctx, p.ID, Approved, "alice", "", t0); err != nil {
		t.Fatal(err)
	}
	if w := receive(t, again); w.err != nil || w.a.State != Approved {
		t.Errorf("Wait after the drop = %+v, %v; want the approval", w.a, w.err)
	}
}

// A decision whose announcement is lost still reaches the Wait, at its
// next recheck.
func TestRedisWaitRechecks(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	srv := redistest.Start(t)
	admin := srv.Client()
	s := NewRedis(srv.Client(), &RedisOptions{Recheck: 20 * time.Millisecond})
	p := park(t, s, []byte(`{}`))
	ch := waitAsync(ctx, s, p.ID)
	awaitWaits(t, p.ID, 1, s)
	// Decided without the script, hence without its announcement.
	if err := admin.HSet(ctx, s.key(p.ID), "state", string(Denied)).Err(); err != nil {
		t.Fatal(err)
	}
	if w := receive(t, ch); w.err != nil || w.a.State != Denied {
		t.Errorf("Wait on a silent decision = %+v, %v; want the denial", w.a, w.err)
	}
}

// A Wait whose ctx ends returns ctx's error and lets go of its
// subscription.
func TestRedisWaitCancelled(t *testing.T) {
	srv := redistest.Start(t)
	admin := srv.Client()
	s := NewRedis(srv.Client(), nil)
	p := park(t, s, []byte(`{}`))

	ctx, cancel := context.WithCancel(context.Background())
	ch := waitAsync(ctx, s, p.ID)
	awaitWaits(t, p.ID, 1, s)
	cancel()
	if w := receive(t, ch); !errors.Is(w.err, context.Canceled) {
		t.Errorf("Wait after cancel = %+v, %v; want context.Canceled", w.a, w.err)
	}
	awaitWaits(t, p.ID, 0, s)
	awaitSubscribers(t, admin, 0)

	// A deadline ends Wait as ctx's error, not as a Redis read timeout.
	dctx, dcancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer dcancel()
	if w := receive(t, waitAsync(dctx, s, p.ID)); !errors.Is(w.err, context.DeadlineExceeded) {
		t.Errorf("Wait past its deadline = %+v, %v; want context.DeadlineExceeded", w.a, w.err)
	}
}

// race runs n calls of f, alternating between the replicas, all at once,
// and counts the outcomes: nil, or errors.Is lost.
func race(t *testing.T, replicas []*Redis, n int, lost error, f func(s *Redis, i int) error) (won, refused int64) {
	t.Helper()
	var w, r atomic.Int64
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			err := f(replicas[i%len(replicas)], i)
			switch {
			case err == nil:
				w.Add(1)
			case errors.Is(err, lost):
				r.Add(1)
			default:
				t.Error(err)
			}
		})
	}
	close(start)
	wg.Wait()
	return w.Load(), r.Load()
}

// A transition whose reply comes too late, so that go-redis sends it
// again on another connection, reports what it did: the retry finds the
// store changed by its own first attempt, not by someone else.
func TestRedisTransitionsRetried(t *testing.T) {
	p := redistest.Start(t).Proxy()
	s := NewRedis(p.Client(), nil)
	ctx := context.Background()
	body := []byte(`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"notion__delete_page","arguments":{}}}`)
	// Each script once without a hold, so that Redis has it: else the
	// held reply would be NOSCRIPT, before the script ran.
	warm := park(t, s, body)
	if _, err := s.Finish(ctx, warm.ID, Approved, "alice", "", t0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Execute(ctx, warm.ID, body); err != nil {
		t.Fatal(err)
	}
	late := func(id string) { p.DelayReply(id, 2*redistest.ProxyReadTimeout) }

	a, err := New("dec-1", "bot", "editor", "notion", "delete_page", body, t0, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	late(a.ID)
	if err := s.Create(ctx, a); err != nil {
		t.Errorf("Create sent twice: %v", err)
	}
	late(a.ID)
	if got, err := s.Finish(ctx, a.ID, Approved, "alice", "", t0); err != nil || got.State != Approved || got.DecidedBy != "alice" {
		t.Errorf("Finish sent twice = %+v, %v; want it approved by alice", got, err)
	}
	late(a.ID)
	if got, err := s.Execute(ctx, a.ID, body); err != nil || got.State != Executed {
		t.Errorf("Execute sent twice = %+v, %v; want it executed", got, err)
	}

	v := park(t, s, body)
	if _, err := s.Finish(ctx, v.ID, Approved, "alice", "", t0); err != nil {
		t.Fatal(err)
	}
	late(v.ID)
	if got, err := s.Void(ctx, v.ID, "stale"); err != nil || got.State != Voided {
		t.Errorf("Void sent twice = %+v, %v; want it voided", got, err)
	}

	// Another's transition is still another's.
	if _, err := s.Finish(ctx, a.ID, Denied, "bob", "", t0); !errors.Is(err, ErrNotPending) {
		t.Errorf("a second decision: %v, want ErrNotPending", err)
	}
	if _, err := s.Execute(ctx, a.ID, body); !errors.Is(err, ErrNotApproved) {
		t.Errorf("a second Execute: %v, want ErrNotApproved", err)
	}
	if err := s.Create(ctx, a); err == nil {
		t.Error("creating the approval again succeeded")
	}
}

// Replicas racing to decide one approval: exactly one decision stands,
// and it is the one stored.
func TestRedisFinishRace(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	replicas := []*Redis{NewRedis(srv.Client(), nil), NewRedis(srv.Client(), nil)}
	for round := range 20 {
		p := park(t, replicas[0], []byte(`{}`))
		var winner atomic.Value
		won, refused := race(t, replicas, 8, ErrNotPending, func(s *Redis, i int) error {
			to := []State{Approved, Denied}[i%2]
			got, err := s.Finish(ctx, p.ID, to, "op"+string(rune('0'+i)), "", t0)
			if err == nil {
				winner.Store(got)
			}
			return err
		})
		if won != 1 || refused != 7 {
			t.Fatalf("round %d: %d decisions stood, %d refused; want 1 and 7", round, won, refused)
		}
		w := winner.Load().(*Approval)
		got, err := replicas[1].Get(ctx, p.ID)
		if err != nil || got.State != w.State || got.DecidedBy != w.DecidedBy {
			t.Fatalf("round %d: stored %+v, %v; the winner was %s by %s", round, got, err, w.State, w.DecidedBy)
		}
	}
}

// Replicas racing to execute one approved approval: exactly one may send
// it upstream.
func TestRedisExecuteRace(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	replicas := []*Redis{NewRedis(srv.Client(), nil), NewRedis(srv.Client(), nil)}
	for round := range 20 {
		p := park(t, replicas[0], []byte(`{}`))
		if _, err := replicas[1].Finish(ctx, p.ID, Approved, "alice", "", t0); err != nil {
			t.Fatal(err)
		}
		won, refused := race(t, replicas, 8, ErrNotApproved, func(s *Redis, _ int) error {
			_, err := s.Execute(ctx, p.ID, p.Body)
			return err
		})
		if won != 1 || refused != 7 {
			t.Fatalf("round %d: %d executions, %d refused; want 1 and 7", round, won, refused)
		}
	}
}

// With Redis down every method fails with an error (and a Wait already
// waiting ends with one); once Redis is back, everything works again.
func TestRedisDown(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	a, b := NewRedis(srv.Client(), nil), NewRedis(srv.Client(), nil)
	p := park(t, a, []byte(`{}`))

	gctx, cancel := context.WithTimeout(ctx, hangGuard)
	defer cancel()
	blocked := waitAsync(gctx, a, p.ID)
	awaitWaits(t, p.ID, 1, a)
	srv.Stop()
	if w := receive(t, blocked); w.err == nil || errors.Is(w.err, context.DeadlineExceeded) {
		t.Errorf("a Wait when Redis stopped = %+v, %v; want a Redis error", w.a, w.err)
	}

	down := func(method string, err error) {
		t.Helper()
		switch {
		case err == nil:
			t.Errorf("%s with Redis down succeeded", method)
		case errors.Is(err, context.DeadlineExceeded):
			t.Errorf("%s with Redis down hung until the guard: %v", method, err)
		case errors.Is(err, ErrNotFound), errors.Is(err, ErrNotPending), errors.Is(err, ErrNotApproved):
			t.Errorf("%s with Redis down: %v, a Store answer rather than a failure", method, err)
		}
	}
	q, err := New("dec-2", "bot", "editor", "notion", "delete_page", []byte(`{}`), t0, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	down("Create", b.Create(gctx, q))
	_, err = b.Get(gctx, p.ID)
	down("Get", err)
	_, err = b.List(gctx, "")
	down("List", err)
	_, err = b.Finish(gctx, p.ID, Approved, "alice", "", t0)
	down("Finish", err)
	_, err = b.Execute(gctx, p.ID, p.Body)
	down("Execute", err)
	_, err = b.Void(gctx, p.ID, "why")
	down("Void", err)
	_, err = b.Wait(gctx, p.ID)
	down("Wait", err)

	// Persistence is off: the restarted Redis is empty. A client whose
	// dials all failed probes the server on its own schedule before
	// dialing again, hence the wait for each replica.
	srv.Restart()
	for _, s := range []*Redis{a, b} {
		eventually(t, "Get to reach the restarted Redis", func() bool {
			_, err := s.Get(gctx, p.ID)
			return errors.Is(err, ErrNotFound)
		})
	}
	q = park(t, a, []byte(`{}`))
	waiting := waitAsync(gctx, a, q.ID)
	awaitWaits(t, q.ID, 1, a)
	if _, err := b.Finish(gctx, q.ID, Approved, "alice", "", t0); err != nil {
		t.Fatalf("Finish after the restart: %v", err)
	}
	if w := receive(t, waiting); w.err != nil || w.a.State != Approved {
		t.Errorf("Wait after the restart = %+v, %v", w.a, w.err)
	}
	if _, err := a.Execute(gctx, q.ID, q.Body); err != nil {
		t.Errorf("Execute after the restart: %v", err)
	}
	if l, err := b.List(gctx, Executed); err != nil || len(l) != 1 || l[0].ID != q.ID {
		t.Errorf("List after the restart = %v, %v", l, err)
	}
}

// Keys expire: pending ones a grace after Expires, decided ones a
// retention after the decision; index entries of expired keys are
// skipped by List and trimmed by a later Create.
func TestRedisExpiry(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	client := srv.Client()

	s := NewRedis(client, nil)
	p := park(t, s, []byte(`{}`))
	ttl := client.PTTL(ctx, s.key(p.ID)).Val()
	if ttl <= 0 || ttl > time.Hour+DefaultPendingGrace {
		t.Errorf("a pending approval's TTL is %v, want at most its hour plus %v", ttl, DefaultPendingGrace)
	}
	if _, err := s.Finish(ctx, p.ID, Approved, "alice", "", t0); err != nil {
		t.Fatal(err)
	}
	ttl = client.PTTL(ctx, s.key(p.ID)).Val()
	if ttl <= time.Hour+DefaultPendingGrace || ttl > DefaultRetention {
		t.Errorf("a decided approval's TTL is %v, want the retention, %v", ttl, DefaultRetention)
	}

	short := NewRedis(client, &RedisOptions{Prefix: "short:{approvals}:", Retention: time.Millisecond})
	// kept shares short's keys but was decided by a replica keeping
	// decisions the default time.
	kept := park(t, NewRedis(client, &RedisOptions{Prefix: "short:{approvals}:"}), []byte(`{}`))
	if _, err := NewRedis(client, &RedisOptions{Prefix: "short:{approvals}:"}).Finish(ctx, kept.ID, Approved, "alice", "", t0); err != nil {
		t.Fatal(err)
	}
	gone := park(t, short, []byte(`{}`))
	if _, err := short.Finish(ctx, gone.ID, Denied, "bob", "", t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	member := gone.Created.Format(indexTime) + " " + gone.ID
	eventually(t, "the decided approval to expire", func() bool {
		_, err := short.Get(ctx, gone.ID)
		return errors.Is(err, ErrNotFound)
	})
	if l, err := short.List(ctx, ""); err != nil || len(l) != 1 || l[0].ID != kept.ID {
		t.Errorf("List = %v, %v; want only the approval not expired", l, err)
	}
	// The expired approval is still the newest in the recent set, alone
	// on Recent's first page of one: Recent reads on.
	if r, err := short.Recent(ctx, 1); err != nil || len(r) != 1 || r[0].ID != kept.ID {
		t.Errorf("Recent(1) = %v, %v; want the approval not expired", r, err)
	}
	if _, err := short.Finish(ctx, gone.ID, Approved, "alice", "", t0); !errors.Is(err, ErrNotFound) {
		t.Errorf("Finish of an expired approval: %v, want ErrNotFound", err)
	}
	// Each Create trims what is due; the loop only absorbs a clock tick
	// between the key's expiry and the trim's reading of TIME.
	eventually(t, "Create to trim the expired approval", func() bool {
		park(t, short, []byte(`{}`))
		inIndex := client.ZScore(ctx, short.index(Denied), member).Err()
		inExpiry := client.ZScore(ctx, short.expiryKey(), member).Err()
		inRecent := client.ZScore(ctx, short.recentKey(), member).Err()
		return errors.Is(inIndex, redis.Nil) && errors.Is(inExpiry, redis.Nil) && errors.Is(inRecent, redis.Nil)
	})
	if n := client.ZCard(ctx, short.index(Pending)).Val(); n < 1 {
		t.Errorf("trimming removed live approvals: %d pending left", n)
	}
}
