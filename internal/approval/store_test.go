package approval

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/amgateway/amg/internal/testclock"
)

// testStore is the contract every Store implementation runs.
func testStore(t *testing.T, newStore func(t *testing.T) Store) {
	ctx := context.Background()
	now := time.Date(2026, 11, 26, 9, 0, 0, 0, time.UTC)
	body := []byte(`{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"notion__delete_page","arguments":{"page_id":"pg_1"}}}`)
	park := func(t *testing.T, s Store, at time.Time) *Approval {
		t.Helper()
		a, err := New("dec-1", "bot", "editor", "notion", "delete_page", body, at, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Create(ctx, a); err != nil {
			t.Fatal(err)
		}
		return a
	}

	t.Run("create, get, list", func(t *testing.T) {
		s := newStore(t)
		b := park(t, s, now.Add(time.Second))
		a := park(t, s, now)
		got, err := s.Get(ctx, a.ID)
		if err != nil || got.State != Pending || string(got.Body) != string(body) || got.Tool != "delete_page" {
			t.Fatalf("Get = %+v, %v", got, err)
		}
		if err := s.Create(ctx, a); err == nil {
			t.Error("creating the same approval twice succeeded")
		}
		// An approval is born pending: one already decided would skip the
		// approver.
		decided, err := New("dec-2", "bot", "editor", "notion", "delete_page", body, now, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		decided.State = Approved
		if err := s.Create(ctx, decided); err == nil || !strings.Contains(err.Error(), "state approved, want pending") {
			t.Errorf("Create of an approved approval: %v, want refused", err)
		}
		if _, err := s.Get(ctx, decided.ID); !errors.Is(err, ErrNotFound) {
			t.Errorf("Get of a refused approval: %v, want ErrNotFound", err)
		}
		if _, err := s.Get(ctx, "apr_nope"); !errors.Is(err, ErrNotFound) {
			t.Errorf("Get of an unknown id: %v, want ErrNotFound", err)
		}
		list, err := s.List(ctx, Pending)
		if err != nil || len(list) != 2 || list[0].ID != a.ID || list[1].ID != b.ID {
			t.Errorf("List(pending) = %v, %v; want the older first", list, err)
		}
		if n, err := s.CountPending(ctx); n != 2 || err != nil {
			t.Errorf("CountPending = %d, %v; want 2", n, err)
		}
		if _, err := s.Finish(ctx, a.ID, Denied, "alice", "", now); err != nil {
			t.Fatal(err)
		}
		if n, err := s.CountPending(ctx); n != 1 || err != nil {
			t.Errorf("CountPending after a denial = %d, %v; want 1", n, err)
		}
	})

	t.Run("decided once, executed once", func(t *testing.T) {
		s := newStore(t)
		a := park(t, s, now)
		if _, err := s.Execute(ctx, a.ID, body); !errors.Is(err, ErrNotApproved) {
			t.Errorf("Execute of a pending approval: %v, want ErrNotApproved", err)
		}
		got, err := s.Finish(ctx, a.ID, Approved, "alice", "looks right", now.Add(time.Minute))
		if err != nil || got.State != Approved || got.DecidedBy != "alice" || got.Reason != "looks right" {
			t.Fatalf("Finish = %+v, %v", got, err)
		}
		if _, err := s.Finish(ctx, a.ID, Denied, "bob", "", now); !errors.Is(err, ErrNotPending) {
			t.Errorf("a second decision: %v, want ErrNotPending", err)
		}
		if got, err := s.Execute(ctx, a.ID, body); err != nil || got.State != Executed {
			t.Fatalf("Execute = %+v, %v", got, err)
		}
		if _, err := s.Execute(ctx, a.ID, body); !errors.Is(err, ErrNotApproved) {
			t.Errorf("a second Execute: %v, want ErrNotApproved", err)
		}
		d := park(t, s, now)
		if _, err := s.Finish(ctx, d.ID, Denied, "bob", "no", now); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Execute(ctx, d.ID, body); !errors.Is(err, ErrNotApproved) {
			t.Errorf("Execute of a denied approval: %v, want ErrNotApproved", err)
		}
		if _, err := s.Finish(ctx, d.ID, Executed, "", "", now); err == nil {
			t.Error("Finish to executed succeeded")
		}
	})

	t.Run("voided, or left approved when the request was altered", func(t *testing.T) {
		s := newStore(t)
		a := park(t, s, now)
		if _, err := s.Void(ctx, a.ID, "too soon"); !errors.Is(err, ErrNotApproved) {
			t.Errorf("Void of a pending approval: %v, want ErrNotApproved", err)
		}
		if _, err := s.Finish(ctx, a.ID, Approved, "alice", "looks right", now); err != nil {
			t.Fatal(err)
		}
		other := append([]byte(nil), body...)
		other[len(other)-5] = '2' // pg_2
		if _, err := s.Execute(ctx, a.ID, other); !errors.Is(err, ErrAltered) {
			t.Errorf("Execute of another request: %v, want ErrAltered", err)
		}
		if got, err := s.Get(ctx, a.ID); err != nil || got.State != Approved {
			t.Fatalf("after ErrAltered: %+v, %v; want it approved still", got, err)
		}
		got, err := s.Void(ctx, a.ID, "the stored request is not the one parked")
		if err != nil || got.State != Voided || got.VoidReason != "the stored request is not the one parked" ||
			got.DecidedBy != "alice" || got.Reason != "looks right" {
			t.Fatalf("Void = %+v, %v; want it voided, the decision kept", got, err)
		}
		if got, err := s.Get(ctx, a.ID); err != nil || got.State != Voided || got.VoidReason == "" {
			t.Errorf("Get after Void = %+v, %v", got, err)
		}
		if _, err := s.Execute(ctx, a.ID, body); !errors.Is(err, ErrNotApproved) {
			t.Errorf("Execute of a voided approval: %v, want ErrNotApproved", err)
		}
		if _, err := s.Void(ctx, a.ID, "again"); !errors.Is(err, ErrNotApproved) {
			t.Errorf("a second Void: %v, want ErrNotApproved", err)
		}
		if list, err := s.List(ctx, Voided); err != nil || len(list) != 1 || list[0].ID != a.ID {
			t.Errorf("List(voided) = %v, %v", list, err)
		}
		if list, err := s.List(ctx, Approved); err != nil || len(list) != 0 {
			t.Errorf("List(approved) = %v, %v; want none", list, err)
		}
		if _, err := s.Void(ctx, "apr_nope", "why"); !errors.Is(err, ErrNotFound) {
			t.Errorf("Void of an unknown id: %v, want ErrNotFound", err)
		}
	})

	t.Run("no decision after expiry", func(t *testing.T) {
		s := newStore(t)
		a := park(t, s, now) // expires an hour on
		for _, to := range []State{Approved, Denied} {
			if _, err := s.Finish(ctx, a.ID, to, "alice", "", a.Expires); !errors.Is(err, ErrExpired) || !errors.Is(err, ErrNotPending) {
				t.Errorf("Finish(%s) at the expiry: %v, want ErrExpired, an ErrNotPending", to, err)
			}
		}
		if got, err := s.Get(ctx, a.ID); err != nil || got.State != Pending {
			t.Fatalf("after late decisions: %+v, %v; want it pending still", got, err)
		}
		if got, err := s.Finish(ctx, a.ID, Expired, "amg", "no decision in time", a.Expires); err != nil || got.State != Expired {
			t.Errorf("Finish(expired) at the expiry = %+v, %v", got, err)
		}
	})

	t.Run("recent", func(t *testing.T) {
		s := newStore(t)
		if got, err := s.Recent(ctx, 10); err != nil || len(got) != 0 {
			t.Fatalf("Recent of an empty store = %v, %v", got, err)
		}
		// Created in one order, decided in another: Recent follows the
		// decisions, and leaves out what is still pending.
		var parked []*Approval
		for i := range 4 {
			parked = append(parked, park(t, s, now.Add(time.Duration(i)*time.Second)))
		}
		for _, f := range []struct {
			a  *Approval
			to State
			at time.Duration
		}{{parked[2], Approved, time.Minute}, {parked[0], Denied, 3 * time.Minute}, {parked[3], Expired, 2 * time.Minute}} {
			if _, err := s.Finish(ctx, f.a.ID, f.to, "alice", "", now.Add(f.at)); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := s.Execute(ctx, parked[2].ID, body); err != nil {
			t.Fatal(err)
		}
		ids := func(as []*Approval) (out []string) {
			for _, a := range as {
				out = append(out, a.ID+" "+string(a.State))
			}
			return out
		}
		want := ids([]*Approval{
			{ID: parked[0].ID, State: Denied}, {ID: parked[3].ID, State: Expired}, {ID: parked[2].ID, State: Executed},
		})
		for n := range 5 {
			got, err := s.Recent(ctx, n)
			if err != nil {
				t.Fatal(err)
			}
			if w := want[:min(n, len(want))]; !slices.Equal(ids(got), w) {
				t.Errorf("Recent(%d) = %v, want %v", n, ids(got), w)
			}
		}
		got, err := s.Recent(ctx, 1)
		if err != nil || len(got) != 1 || got[0].BodySHA256 != parked[0].BodySHA256 || got[0].Tool != "delete_page" ||
			!got[0].DecidedAt.Equal(now.Add(3*time.Minute)) {
			t.Errorf("Recent(1) = %+v, %v; want the whole approval", got, err)
		}
	})

	t.Run("the request of a call that will not run is dropped", func(t *testing.T) {
		s := newStore(t)
		var parked []*Approval
		for i := range 5 {
			parked = append(parked, park(t, s, now.Add(time.Duration(i)*time.Second)))
		}
		denied, expired, cancelled, voided, executed := parked[0], parked[1], parked[2], parked[3], parked[4]
		for _, f := range []struct {
			a  *Approval
			to State
		}{{denied, Denied}, {expired, Expired}, {cancelled, Cancelled}, {voided, Approved}, {executed, Approved}} {
			got, err := s.Finish(ctx, f.a.ID, f.to, "alice", "", now.Add(time.Minute))
			if err != nil {
				t.Fatal(err)
			}
			if kept := len(got.Body) > 0; kept != (f.to == Approved) {
				t.Errorf("Finish(%s) returned the request: %v; want it only while the call may run", f.to, kept)
			}
		}
		if got, err := s.Void(ctx, voided.ID, "the policy changed"); err != nil || len(got.Body) != 0 {
			t.Errorf("Void = %+v, %v; want it without its request", got, err)
		}
		if _, err := s.Execute(ctx, executed.ID, body); err != nil {
			t.Fatal(err)
		}
		for _, a := range parked {
			got, err := s.Get(ctx, a.ID)
			if err != nil {
				t.Fatal(err)
			}
			if want := map[bool]string{true: string(body)}[a == executed]; string(got.Body) != want || got.BodySHA256 != a.BodySHA256 {
				t.Errorf("%s approval: request %q, SHA-256 %s; want request %q, SHA-256 %s", got.State, got.Body, got.BodySHA256, want, a.BodySHA256)
			}
		}
		recent, err := s.Recent(ctx, 10)
		if err != nil || len(recent) != 5 {
			t.Fatalf("Recent = %v, %v", recent, err)
		}
		for _, a := range recent {
			if a.State != Executed && len(a.Body) != 0 {
				t.Errorf("Recent holds the request of the %s approval %s", a.State, a.ID)
			}
		}
	})

	t.Run("wait", func(t *testing.T) {
		s := newStore(t)
		a := park(t, s, now)
		done := make(chan *Approval, 1)
		go func() {
			got, err := s.Wait(ctx, a.ID)
			if err != nil {
				t.Error(err)
			}
			done <- got
		}()
		if _, err := s.Finish(ctx, a.ID, Cancelled, "", "the agent went away", now); err != nil {
			t.Fatal(err)
		}
		select {
		case got := <-done:
			if got == nil || got.State != Cancelled {
				t.Errorf("Wait returned %+v", got)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Wait did not return after the decision")
		}
		b := park(t, s, now)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := s.Wait(cctx, b.ID); !errors.Is(err, context.Canceled) {
			t.Errorf("Wait with a cancelled context: %v", err)
		}
	})
}

func TestMemory(t *testing.T) {
	testStore(t, func(*testing.T) Store { return NewMemory(nil) })
}

func TestMemoryForgets(t *testing.T) {
	clock := testclock.New(time.Date(2026, 11, 26, 9, 0, 0, 0, time.UTC))
	const retention = time.Hour
	m := NewMemory(&MemoryOptions{Retention: retention, PendingGrace: retention, Now: clock.Now})
	testForgetting(t, m, retention, clock.Advance)

	// What is forgotten is dropped, not only hidden: the next Create
	// prunes it, and a waiter on an approval dropped while pending wakes.
	a, err := New("dec-2", "bot", "editor", "notion", "delete_page", []byte(`{}`), clock.Now(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Create(context.Background(), a); err != nil {
		t.Fatal(err)
	}
	woke := make(chan error, 1)
	go func() {
		_, err := m.Wait(context.Background(), a.ID)
		woke <- err
	}()
	clock.Advance(2 * retention)
	b, _ := New("dec-3", "bot", "editor", "notion", "delete_page", []byte(`{}`), clock.Now(), time.Hour)
	if err := m.Create(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	m.mu.Lock()
	n := len(m.all) + len(m.decided) + len(m.forget)
	m.mu.Unlock()
	if n != 3 {
		t.Errorf("after pruning the store holds %d entries, want the new approval's 3", n)
	}
	select {
	case err := <-woke:
		if !errors.Is(err, ErrNotFound) {
			t.Errorf("a waiter on a dropped approval got %v, want ErrNotFound", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("a waiter on a dropped approval never woke")
	}
}

// ValidID accepts exactly the ids New makes.
func TestValidID(t *testing.T) {
	a, err := New("d", "agent", "role", "s", "t", []byte(`{}`), time.Now(), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if !ValidID(a.ID) {
		t.Errorf("ValidID(%q) = false for an id New made", a.ID)
	}
	for _, id := range []string{"", "apr_", "apr_0000000000000000000000z0", "apr_00000000000000000000000", "apr_0000000000000000000000000",
		"APR_000000000000000000000000", "apr_00000000000000000000000A", "x" + a.ID[1:], a.ID + " "} {
		if ValidID(id) {
			t.Errorf("ValidID(%q) = true", id)
		}
	}
}

// testForgetting is the contract of how long a store keeps approvals: a
// decided one for the retention after its decision, a pending one for its
// lifetime plus the grace; then it is gone for every method. s keeps
// decided approvals for retention and pending ones a grace of retention
// past their expiry, and wait lets that much of its clock pass.
func testForgetting(t *testing.T, s Store, retention time.Duration, wait func(time.Duration)) {
	ctx := context.Background()
	body := []byte(`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"notion__delete_page","arguments":{}}}`)
	create := func(life time.Duration) *Approval {
		t.Helper()
		a, err := New("dec-1", "bot", "editor", "notion", "delete_page", body, time.Now(), life)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Create(ctx, a); err != nil {
			t.Fatal(err)
		}
		return a
	}
	decided := create(time.Hour)
	if _, err := s.Finish(ctx, decided.ID, Approved, "alice", "", time.Now()); err != nil {
		t.Fatal(err)
	}
	// An approval that expires at once: gone a grace after its creation,
	// decided or not.
	orphan := create(0)
	long := create(time.Hour)

	wait(retention / 3)
	for _, a := range []*Approval{decided, orphan, long} {
		if _, err := s.Get(ctx, a.ID); err != nil {
			t.Errorf("approval %s gone before its time: %v", a.ID, err)
		}
	}
	if recent, err := s.Recent(ctx, 10); err != nil || len(recent) != 1 || recent[0].ID != decided.ID {
		t.Errorf("Recent before forgetting = %v, %v; want the decided approval", recent, err)
	}

	wait(retention)
	for _, a := range []*Approval{decided, orphan} {
		if _, err := s.Get(ctx, a.ID); !errors.Is(err, ErrNotFound) {
			t.Errorf("approval %s still there after its time: %v", a.ID, err)
		}
		if _, err := s.Finish(ctx, a.ID, Denied, "bob", "", time.Now()); !errors.Is(err, ErrNotFound) {
			t.Errorf("Finish of a forgotten approval: %v, want ErrNotFound", err)
		}
		if _, err := s.Execute(ctx, a.ID, body); !errors.Is(err, ErrNotFound) {
			t.Errorf("Execute of a forgotten approval: %v, want ErrNotFound", err)
		}
		if _, err := s.Wait(ctx, a.ID); !errors.Is(err, ErrNotFound) {
			t.Errorf("Wait on a forgotten approval: %v, want ErrNotFound", err)
		}
	}
	list, err := s.List(ctx, "")
	if err != nil || len(list) != 1 || list[0].ID != long.ID {
		t.Errorf("List after forgetting = %v, %v; want only the approval still pending", list, err)
	}
	if n, err := s.CountPending(ctx); n != 1 || err != nil {
		t.Errorf("CountPending after forgetting = %d, %v; want 1, the approval still pending", n, err)
	}
	if recent, err := s.Recent(ctx, 10); err != nil || len(recent) != 0 {
		t.Errorf("Recent after forgetting = %v, %v; want none", recent, err)
	}
}
