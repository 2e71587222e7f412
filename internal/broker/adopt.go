package broker

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/amgateway/amg/authz"
)

// Replicas share MCP sessions through a SessionStore: the replica that
// initializes a session records who owns it and how it was initialized;
// another replica that gets a request for it recreates the session under
// the same id by replaying that initialize to its own SDK server, then
// serves the request. What lived only in the first replica (its upstream
// sessions, requests it had sent the agent) starts afresh. A session that
// ends on one replica (not for being idle there, nor because the replica
// shuts down) ends on all: its record is deleted, and the replicas that
// hold a copy close it when told so (SessionStore.Ended), or else when
// the store refuses to save its record again as they renew it.

// SessionRecord is what a replica needs to take over a session.
type SessionRecord struct {
	Owner string          `json:"owner"` // agent and role, as ServeHTTP checks them
	Init  json.RawMessage `json:"init"`  // the agent's initialize params
}

// SessionStore keeps session records for the replicas; records of idle
// sessions expire.
type SessionStore interface {
	// Save records session id for ttl, or renews its record, unless the
	// session ended (see Delete): ErrSessionEnded then.
	Save(ctx context.Context, id string, rec SessionRecord, ttl time.Duration) error
	// Load returns the record, or ok false when there is none, or the
	// session ended.
	Load(ctx context.Context, id string) (rec SessionRecord, ok bool, err error)
	// Delete forgets a session that ended, and for ttl remembers that it
	// ended, so that no replica revives it (a renewal in flight, a
	// replica taking it over); it tells every replica following Ended.
	Delete(ctx context.Context, id string, ttl time.Duration) error
	// Ended calls ended with the id of every session deleted from now
	// on, through any replica sharing the store, until the returned
	// Closer is closed; it returns once it follows. Delivery is best
	// effort (Renew is the backstop); ended runs on one goroutine, and
	// must not block for long.
	Ended(ctx context.Context, ended func(id string)) (io.Closer, error)
}

// ErrSessionEnded is SessionStore.Save's for a session that ended.
var ErrSessionEnded = errors.New("session ended")

// sessionCreation is a request that may create a session, from when it
// takes newSessions until the SDK has asked for the session's id (or the
// request ends without asking).
type sessionCreation struct {
	id   string // the id to give, when adopting; "" for a fresh one
	done bool
}

func (b *Broker) beginSession(id string) *sessionCreation {
	b.newSessions.Lock()
	c := &sessionCreation{id: id}
	b.creating = c
	return c
}

// endSession lets the next session be created; it is called once the id
// is taken, and again (doing nothing) when the request ends.
func (b *Broker) endSession(c *sessionCreation) {
	if c.done {
		return
	}
	c.done = true
	b.creating = nil
	b.newSessions.Unlock()
}

// newSessionID is the role servers' GetSessionID. The SDK calls it while
// serving a request without a session id, which holds newSessions: it
// returns the id being adopted, or a fresh random one, and lets the next
// request in at once, so a long sessionless request holds no one up.
func (b *Broker) newSessionID() string {
	var r [16]byte
	rand.Read(r[:])
	id := hex.EncodeToString(r[:])
	if c := b.creating; c != nil {
		if c.id != "" {
			id = c.id
		}
		b.endSession(c)
	}
	return id
}

// saveSession records a session the SDK has just initialized, or taken
// over from another replica: one that ended meanwhile is marked gone, and
// adopt ends it.
func (b *Broker) saveSession(ctx context.Context, req *mcp.ServerRequest[*mcp.InitializeParams]) {
	if b.sessionStore == nil || req.Extra == nil || req.Session.ID() == "" {
		return
	}
	init, err := json.Marshal(req.Params)
	if err != nil {
		return
	}
	h := req.Extra.Header
	rec := SessionRecord{Owner: h.Get(authz.HeaderAgent) + "\x00" + h.Get(authz.HeaderRole), Init: init}
	as := b.agentSession(req.Session)
	switch err := b.sessionStore.Save(context.WithoutCancel(ctx), req.Session.ID(), rec, b.idle); {
	case errors.Is(err, ErrSessionEnded):
		as.gone.Store(true)
		return
	case err != nil:
		b.log.Warn("session not shared with other replicas", "err", err)
		return
	}
	as.mu.Lock()
	as.shared = &rec
	as.mu.Unlock()
	as.renewed.Store(time.Now().UnixNano())
}

// Why adopt took no session over, when the request must hear why: the
// session store could not be read, or the session is another agent's.
var (
	errSessionStore = errors.New("the session store cannot be read")
	errNotOwned     = errors.New("the session belongs to another agent")
)

// adopt recreates session id, which another replica initialized, for a
// request of owner on role, if the session store holds it as owner's.
// Whether the session now exists here is for the caller to see (owners);
// the error says why it was not taken over when the request is to be
// refused for it (errSessionStore, errNotOwned).
func (b *Broker) adopt(r *http.Request, id, owner, role string) error {
	rec, ok, err := b.sessionStore.Load(r.Context(), id)
	if err != nil {
		b.log.Warn("cannot look up a session of another replica", "err", err)
		return fmt.Errorf("%w: %w", errSessionStore, err)
	}
	switch {
	case !ok:
		return nil
	case rec.Owner != owner:
		return errNotOwned
	}
	// One request at a time takes a session over: two that come together
	// (an agent's GET stream and its next POST, after a failover) would
	// each replay initialize, and the SDK would keep the second copy only,
	// the first living on where no request reaches it, nor the agent's
	// end of the session.
	done := make(chan struct{})
	for {
		other, busy := b.adopting.LoadOrStore(id, done)
		if !busy {
			break
		}
		select {
		case <-other.(chan struct{}):
		case <-r.Context().Done():
			return nil
		}
	}
	defer func() {
		b.adopting.Delete(id)
		close(done)
	}()
	if _, ok := b.owners.Load(id); ok {
		return nil // taken over by the request it waited for
	}
	if b.isBuried(id) {
		return nil // and ended here since
	}
	creation := b.beginSession(id)
	code, sid := b.replay(r, role, "", fmt.Sprintf(`{"jsonrpc":"2.0","id":"amg-adopt","method":"initialize","params":%s}`, rec.Init))
	b.endSession(creation)
	if code != http.StatusOK || sid != id {
		b.log.Warn("could not take over a session of another replica", "status", code)
		return nil
	}
	if as := b.sessionByID(id); as == nil || as.gone.Load() {
		// It ended on another replica since its record was read: closed
		// here too, and never owned, so that the request that asked for
		// it is refused as for an ended session, not served on it while
		// it closes.
		if as != nil {
			as.ss.Close()
		}
		return nil
	}
	b.own(id, owner)
	b.replay(r, role, id, `{"jsonrpc":"2.0","method":"notifications/initialized"}`)
	return nil
}

// replay sends one message to the role's SDK server as if the agent had,
// and returns the status and the session id of the answer.
func (b *Broker) replay(r *http.Request, role, sid, body string) (int, string) {
	req := httptest.NewRequestWithContext(context.WithoutCancel(r.Context()), http.MethodPost, r.URL.String(), bytes.NewReader([]byte(body)))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	for _, h := range []string{authz.HeaderRole, authz.HeaderAgent, "Mcp-Protocol-Version"} {
		req.Header.Set(h, r.Header.Get(h))
	}
	if sid != "" {
		req.Header.Set("Mcp-Session-Id", sid)
	}
	rec := httptest.NewRecorder()
	b.handler.ServeHTTP(rec, req)
	return rec.Code, rec.Header().Get("Mcp-Session-Id")
}
