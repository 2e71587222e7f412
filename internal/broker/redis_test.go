package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/amgateway/amg/internal/approval"
	"github.com/amgateway/amg/internal/redistest"
)

// Both session stores keep records as the replicas rely on them: a
// record saved again lives on, that of an ended session is never saved
// again, and every follower hears of the end.
func TestSessionStores(t *testing.T) {
	srv := redistest.Start(t)
	for _, tc := range []struct {
		name  string
		store func() SessionStore
	}{
		{"memory", func() SessionStore { return newSessionRecords() }},
		{"redis", func() SessionStore { return NewRedisSessions(srv.Client()) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			s := tc.store()
			heard := make(chan string, 1)
			sub, err := s.Ended(ctx, func(id string) { heard <- id })
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Close()
			rec := SessionRecord{Owner: "bot-1\x00reader", Init: json.RawMessage(`{"protocolVersion":"2025-06-18"}`)}
			for range 2 { // saved, then renewed
				if err := s.Save(ctx, "s1", rec, time.Minute); err != nil {
					t.Fatal(err)
				}
			}
			if got, ok, err := s.Load(ctx, "s1"); err != nil || !ok || !cmp.Equal(got, rec) {
				t.Fatalf("Load after Save: %+v %v %v", got, ok, err)
			}
			if err := s.Delete(ctx, "s1", time.Minute); err != nil {
				t.Fatal(err)
			}
			select {
			case id := <-heard:
				if id != "s1" {
					t.Errorf("heard of the end of %q, want s1", id)
				}
			case <-time.After(10 * time.Second):
				t.Error("no one heard of the end")
			}
			if err := s.Save(ctx, "s1", rec, time.Minute); !errors.Is(err, ErrSessionEnded) {
				t.Errorf("Save of an ended session: %v, want %v", err, ErrSessionEnded)
			}
			if _, ok, err := s.Load(ctx, "s1"); err != nil || ok {
				t.Errorf("Load of an ended session: %v %v, want none", ok, err)
			}

			// A record that expired (a renewal came late) is saved again.
			if err := s.Save(ctx, "s2", rec, 50*time.Millisecond); err != nil {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond) // past the record's lifetime
			if _, ok, err := s.Load(ctx, "s2"); err != nil || ok {
				t.Errorf("Load of an expired record: %v %v, want none", ok, err)
			}
			if err := s.Save(ctx, "s2", rec, time.Minute); err != nil {
				t.Errorf("Save of an expired record: %v", err)
			}
			if _, ok, err := s.Load(ctx, "s2"); err != nil || !ok {
				t.Errorf("Load of an expired record saved again: %v %v", ok, err)
			}
		})
	}
}

// A session the agent ends through one replica ends on the replica that
// began it too, as soon as Redis tells it: its upstream sessions close,
// its call waiting for approval is abandoned (it can no longer be
// approved and run), and it is not taken over again.
func TestSessionEndedOnAnotherReplicaEndsEverywhere(t *testing.T) {
	srv := redistest.Start(t)
	approvals := approval.NewMemory(nil)
	a := parkedGateway(t, approvals, func(o *Options) { o.Sessions = NewRedisSessions(srv.Client()) })
	b := newGatewayOver(t, false, func(o *Options) { o.Sessions = NewRedisSessions(srv.Client()) })
	agent := newRawAgent(t, a)
	agent.post(`{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"notion__get_pages","arguments":{"workspace_id":"ws_abc123"}}}`)
	upstreamSessions := func() (n int) {
		for range a.up.srv.Sessions() {
			n++
		}
		return n
	}
	if n := upstreamSessions(); n != 2 {
		t.Fatalf("the upstream has %d sessions, want the catalogue's and the agent's", n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	agent.postUntil(ctx, `{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"notion__delete_page","arguments":{"page_id":"pg_1"}}}`)
	p := parkedOne(t, approvals)

	if code, _, body := signedSend(t, b, "DELETE", agent.sid, ""); code/100 != 2 {
		t.Fatalf("DELETE through the second replica: %d %s", code, body)
	}
	awaitState(t, approvals, p.ID, approval.Cancelled)
	if got, _ := approvals.Get(ctx, p.ID); got.Reason != errSessionEnded.Error() {
		t.Errorf("the parked call was cancelled for %q, want %q", got.Reason, errSessionEnded)
	}
	eventually(t, "the first replica's copy to end", func() bool { return a.broker.sessionByID(agent.sid) == nil })
	eventually(t, "its upstream session to close", func() bool { return upstreamSessions() == 1 })
	if code, _ := signedPost(t, a, agent.sid, `{"jsonrpc":"2.0","id":4,"method":"tools/list"}`); code != http.StatusNotFound {
		t.Errorf("the ended session, on the replica that began it: HTTP %d, want 404", code)
	}
	if _, ok, err := NewRedisSessions(srv.Client()).Load(ctx, agent.sid); err != nil || ok {
		t.Errorf("the ended session's record: %v %v, want none", ok, err)
	}
}

// A replica that missed word of a session's end learns of it when it
// renews the session's record: the store refuses it, and the replica's
// copy ends.
func TestRenewalFindsTheSessionEnded(t *testing.T) {
	const idle = 400 * time.Millisecond
	store := newSessionRecords()
	store.deaf = true
	a, b, sid := replicaPairOn(t, store, idle)
	copyOnA := a.broker.sessionByID(sid)
	if code, _, body := signedSend(t, b, "DELETE", sid, ""); code/100 != 2 {
		t.Fatalf("DELETE through the second replica: %d %s", code, body)
	}
	time.Sleep(idle / 2) // the record is due for renewal on the first replica
	signedPost(t, a, sid, `{"jsonrpc":"2.0","id":2,"method":"tools/list"}`)
	eventually(t, "the first replica's copy to end", func() bool { return a.broker.sessionByID(sid) == nil })
	if !copyOnA.gone.Load() {
		t.Error("the first replica's copy ended for being idle, not because the session ended")
	}
	if _, ok, _ := store.Load(context.Background(), sid); ok {
		t.Error("the first replica saved the ended session's record again")
	}
}

// An ended session is not taken over again while its upstream sessions
// close, which an upstream may take seconds to let them do: neither on
// the replica where it ended, nor on another. Nor is it after, on the
// replica where it ended, should its record outlive it.
func TestEndedSessionIsNotTakenOverAgain(t *testing.T) {
	for _, failDeletes := range []bool{false, true} {
		name := map[bool]string{false: "record deleted", true: "record not deleted"}[failDeletes]
		t.Run(name, func(t *testing.T) {
			store := newSessionRecords()
			store.failDeletes = failDeletes
			g := newGatewayOver(t, true, func(o *Options) { o.Sessions = store })
			other := newGatewayOver(t, false, func(o *Options) { o.Sessions = store })
			_, sid := signedPost(t, g, "", `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"`+rawVersion+`","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}`)
			signedPost(t, g, sid, `{"jsonrpc":"2.0","method":"notifications/initialized"}`)
			if code, _ := signedPost(t, g, sid, `{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"notion__get_pages","arguments":{"workspace_id":"ws_abc123"}}}`); code != http.StatusOK {
				t.Fatalf("call: HTTP %d", code)
			}
			held := g.up.holdDeletes()
			if code, _, body := signedSend(t, g, "DELETE", sid, ""); code/100 != 2 {
				close(held)
				t.Fatalf("DELETE: %d %s", code, body)
			}
			<-g.up.deleting // the agent's upstream session is closing
			if code, _ := signedPost(t, g, sid, `{"jsonrpc":"2.0","id":3,"method":"tools/list"}`); code != http.StatusNotFound {
				t.Errorf("while its upstream sessions close: HTTP %d, want 404", code)
			}
			if code, _ := signedPost(t, other, sid, `{"jsonrpc":"2.0","id":5,"method":"tools/list"}`); !failDeletes && code != http.StatusNotFound {
				t.Errorf("on another replica, while its upstream sessions close: HTTP %d, want 404", code)
			}
			close(held)
			eventually(t, "the session to go", func() bool { return g.broker.sessionByID(sid) == nil })
			if code, _ := signedPost(t, g, sid, `{"jsonrpc":"2.0","id":4,"method":"tools/list"}`); code != http.StatusNotFound {
				t.Errorf("once they closed: HTTP %d, want 404", code)
			}
		})
	}
}

// racingRecords is a SessionStore whose sessions end on another replica
// just after they are read.
type racingRecords struct{ *sessionRecords }

func (r racingRecords) Load(ctx context.Context, id string) (SessionRecord, bool, error) {
	rec, ok, err := r.sessionRecords.Load(ctx, id)
	r.sessionRecords.Delete(ctx, id, time.Minute)
	return rec, ok, err
}

// A session that ends on another replica while this one takes it over is
// not brought back.
func TestSessionEndedWhileTakenOver(t *testing.T) {
	store := racingRecords{newSessionRecords()}
	_, b, sid := replicaPairOn(t, store, time.Minute)
	if code, _ := signedPost(t, b, sid, `{"jsonrpc":"2.0","id":2,"method":"tools/list"}`); code != http.StatusNotFound {
		t.Errorf("a request for it on the replica taking it over: HTTP %d, want 404", code)
	}
	if _, ok, _ := store.sessionRecords.Load(context.Background(), sid); ok {
		t.Error("the replica taking the session over saved its record again")
	}
}

// meetingRecords is a SessionStore whose first two Loads return together:
// two requests of one session reaching a replica at once, as an agent's
// GET stream and its next POST do after a failover.
type meetingRecords struct {
	*sessionRecords
	mu      sync.Mutex
	callers int
	met     chan struct{}
}

func (m *meetingRecords) Load(ctx context.Context, id string) (SessionRecord, bool, error) {
	m.mu.Lock()
	if m.callers++; m.callers == 2 {
		close(m.met)
	}
	m.mu.Unlock()
	select {
	case <-m.met:
	case <-ctx.Done():
	}
	return m.sessionRecords.Load(ctx, id)
}

// Two requests of one session that reach another replica together take
// it over once: the replica holds one copy of it, which the agent's end
// of the session (DELETE) ends.
func TestSessionTakenOverOnceByRequestsTogether(t *testing.T) {
	store := &meetingRecords{sessionRecords: newSessionRecords(), met: make(chan struct{})}
	_, b, sid := replicaPairOn(t, store, time.Minute)
	var wg sync.WaitGroup
	codes := make([]int, 2)
	for i := range codes {
		wg.Go(func() {
			codes[i], _ = signedPost(t, b, sid, fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"tools/list"}`, 10+i))
		})
	}
	wg.Wait()
	if codes[0] != http.StatusOK || codes[1] != http.StatusOK {
		t.Errorf("two requests at once on the replica taking the session over: HTTP %v, want 200 for both", codes)
	}
	copies := func() (n int) {
		b.broker.sessions.Range(func(k, _ any) bool {
			if k.(*mcp.ServerSession).ID() == sid {
				n++
			}
			return true
		})
		return n
	}
	if n := copies(); n != 1 {
		t.Errorf("the replica holds %d copies of the session, want 1", n)
	}
	if code, _, body := signedSend(t, b, "DELETE", sid, ""); code/100 != 2 {
		t.Fatalf("DELETE: %d %s", code, body)
	}
	eventually(t, "every copy of the ended session to end", func() bool { return copies() == 0 })
	if _, ok := b.broker.owners.Load(sid); ok {
		t.Error("the ended session still has an owner on the replica")
	}
}

// heldRecords is a SessionStore whose first Load waits for release: a
// slow look-up of a session's record.
type heldRecords struct {
	*sessionRecords
	loads   atomic.Int32
	held    chan struct{} // closed once the first Load waits
	release chan struct{}
}

func (h *heldRecords) Load(ctx context.Context, id string) (SessionRecord, bool, error) {
	if h.loads.Add(1) == 1 {
		close(h.held)
		<-h.release
	}
	return h.sessionRecords.Load(ctx, id)
}

// Another agent's request for a session, reaching a replica before the
// session's own agent takes it over there, is refused, however long its
// look-up of the session's record takes: the SDK has the session by then.
func TestSessionOfAnotherAgentRefusedWhileTakenOver(t *testing.T) {
	store := &heldRecords{sessionRecords: newSessionRecords(), held: make(chan struct{}), release: make(chan struct{})}
	_, b, sid := replicaPairOn(t, store, time.Minute)
	other := make(chan int, 1)
	go func() {
		code, _, _ := signedSendAs(t, b, "bot-2", rawVersion, "POST", sid, `{"jsonrpc":"2.0","id":2,"method":"tools/list"}`)
		other <- code
	}()
	<-store.held
	if code, _ := signedPost(t, b, sid, `{"jsonrpc":"2.0","id":3,"method":"tools/list"}`); code != http.StatusOK {
		t.Fatalf("the session's own agent on the replica taking it over: HTTP %d, want 200", code)
	}
	close(store.release)
	if code := <-other; code != http.StatusNotFound {
		t.Errorf("another agent's request for the session: HTTP %d, want 404", code)
	}
}

// A request for another agent's session, which lives on another replica,
// is refused as for an unknown session and recorded as such an attempt,
// as on the replica that holds it.
func TestAnotherAgentsSharedSessionIsRecorded(t *testing.T) {
	_, b, sid := replicaPair(t, time.Minute)
	code, _, _ := signedSendAs(t, b, "bot-2", rawVersion, "POST", sid, `{"jsonrpc":"2.0","id":2,"method":"tools/list"}`)
	if code != http.StatusNotFound {
		t.Fatalf("another agent's request for the session: HTTP %d, want 404", code)
	}
	if rec := b.audit.Last(t); rec.Code != CodeSessionNotOwned || rec.Agent != "bot-2" {
		t.Errorf("recorded %s of %s, want %s of bot-2", rec.Code, rec.Agent, CodeSessionNotOwned)
	}
}

// failingRecords is a SessionStore that cannot be read.
type failingRecords struct{ *sessionRecords }

func (failingRecords) Load(context.Context, string) (SessionRecord, bool, error) {
	return SessionRecord{}, false, errors.New("connection refused")
}

// A request for a session another replica may hold, when the session
// store cannot be read, is refused with an answer saying so, and
// recorded: not taken for a session that does not exist.
func TestSessionStoreDownIsSaid(t *testing.T) {
	_, b, sid := replicaPairOn(t, failingRecords{newSessionRecords()}, time.Minute)
	code, _, answer := signedSend(t, b, "POST", sid, `{"jsonrpc":"2.0","id":2,"method":"tools/list"}`)
	if code != http.StatusServiceUnavailable || !strings.Contains(answer, "could not look up this session; try again") {
		t.Errorf("HTTP %d %s; want 503 saying the session could not be looked up", code, answer)
	}
	if rec := b.audit.Last(t); rec.Code != CodeSessionUnavailable {
		t.Errorf("recorded %s, want %s", rec.Code, CodeSessionUnavailable)
	}
}
