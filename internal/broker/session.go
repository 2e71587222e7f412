package broker

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// sessionIdle is how long an agent session may go without a request.
const sessionIdle = 30 * time.Minute

// defaultMaxSessions is how many sessions an agent may have open at once,
// unless Options say otherwise.
const defaultMaxSessions = 64

// sessionSlot is one of an agent's sessions, reserved before the SDK may
// make it: counted from the reservation, so that agents racing to open
// sessions cannot pass the limit together.
type sessionSlot struct {
	b     *Broker
	agent string
	done  bool // taken by a session, or released
}

// reserveSession reserves a session for agent, or returns nil and how
// many it has if it has as many as it may.
func (b *Broker) reserveSession(agent string) (*sessionSlot, int) {
	b.sessionsMu.Lock()
	defer b.sessionsMu.Unlock()
	if n := b.sessionsOf[agent]; n >= b.maxSessions {
		return nil, n
	}
	b.sessionsOf[agent]++
	return &sessionSlot{b: b, agent: agent}, 0
}

// take keeps the slot for the session made in it, counted until disown.
func (s *sessionSlot) take() { s.done = true }

// release gives the slot back unless a session took it.
func (s *sessionSlot) release() {
	if !s.done {
		s.done = true
		s.b.uncount(s.agent)
	}
}

func (b *Broker) uncount(agent string) {
	b.sessionsMu.Lock()
	defer b.sessionsMu.Unlock()
	if b.sessionsOf[agent]--; b.sessionsOf[agent] <= 0 {
		delete(b.sessionsOf, agent)
	}
}

// own records that session sid belongs to owner, and counts it as one of
// the agent's: over the limit, if need be, since the session exists (taken
// over from another replica, or made of a request that reserved none).
func (b *Broker) own(sid, owner string) {
	if _, had := b.owners.LoadOrStore(sid, owner); had {
		return
	}
	agent, _, _ := strings.Cut(owner, "\x00")
	b.sessionsMu.Lock()
	b.sessionsOf[agent]++
	b.sessionsMu.Unlock()
}

// disown forgets the owner of the ended session sid, and counts it out.
func (b *Broker) disown(sid string) {
	if o, ok := b.owners.LoadAndDelete(sid); ok {
		agent, _, _ := strings.Cut(o.(string), "\x00")
		b.uncount(agent)
	}
}

// agentSession is the broker's state of one agent session: its upstream
// sessions, and what it has in flight on them. The state of an AMG token
// of an agent without sessions (stateless.go) is one too, whose ss is nil.
type agentSession struct {
	ss         *mcp.ServerSession
	lastActive atomic.Int64 // unix nanoseconds of the last request
	// renewed is when the session's shared record (see SessionStore) was
	// last saved or renewed, in unix nanoseconds; 0 while it has none.
	// reaped is set when the session ends for being idle here, gone when
	// it ends because it ended on another replica.
	renewed atomic.Int64
	reaped  atomic.Bool
	gone    atomic.Bool
	closed  chan struct{} // closed once the session ended and its upstream sessions are closed
	// version is the protocol version the session agreed at initialize
	// (see agree), a string once agreed.
	version atomic.Value

	mu         sync.Mutex
	ups        map[string]*mcp.ClientSession // nil once the session ended
	direct     map[string]*directUpstream    // the ups spoken to over HTTP
	connecting map[string]*connectAttempt    // the connection to ups[name] being made
	level      string                        // what the agent last set with logging/setLevel
	calls      inflight
	// directCalls are the calls forwarded without the SDK, by the id the
	// upstream sees; relayed are the upstream requests relayed to the
	// agent on such calls, by the id the agent sees.
	directCalls map[string]*directCall
	relayed     map[string]relayedRequest
	// parked are the calls waiting for a human, by approval id: the
	// agent's cancellation, or the session's end, abandons them. The
	// agent's ids do not key them, nor directCalls: a token's clients
	// (stateless.go) may use one id at once, and each call must be
	// reached.
	parked map[string]parkedCall
	// shared is the session's record for other replicas, once saved.
	shared *SessionRecord
	// tokens are the IDs of the AMG tokens the agent used in the session.
	tokens map[string]bool
	// subs are the agent's resource subscriptions, per upstream, under
	// the upstream's URIs: a new session with the upstream subscribes to
	// them again (resubscribe.go). watching is the session with each
	// upstream whose end is watched for that.
	subs     map[string]map[string]bool
	watching map[string]*mcp.ClientSession
	// token, agent and role are those of a token's state; empty for a
	// session.
	token, agent, role string
	// sdkCalls are a token state's requests the SDK serves, by the
	// agent's id, which the token's clients may use at once.
	sdkCalls map[string][]*sdkCall
}

// useToken notes that the agent used token id in the session.
func (as *agentSession) useToken(id string) {
	as.mu.Lock()
	if as.tokens == nil {
		as.tokens = map[string]bool{}
	}
	as.tokens[id] = true
	as.mu.Unlock()
}

// tokensGone reports whether every token the agent used in the session,
// of which there is one at least, is missing from live.
func (as *agentSession) tokensGone(live map[string]bool) bool {
	as.mu.Lock()
	defer as.mu.Unlock()
	for id := range as.tokens {
		if live[id] {
			return false
		}
	}
	return len(as.tokens) > 0
}

// tokenIDs appends to ids those of the tokens used in the session.
func (as *agentSession) tokenIDs(ids []string) []string {
	as.mu.Lock()
	defer as.mu.Unlock()
	for id := range as.tokens {
		ids = append(ids, id)
	}
	return ids
}

// endRevoked ends, every interval until ctx ends, the agent sessions all
// of whose tokens were revoked or expired: it asks about the tokens the
// sessions used, no others. A store that cannot be asked ends none: the
// requests those tokens make are refused anyway, and the next look
// decides. A token the store cannot read is not live.
func (b *Broker) endRevoked(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var used []string
		b.sessions.Range(func(_, v any) bool {
			used = v.(*agentSession).tokenIDs(used)
			return true
		})
		if len(used) == 0 {
			continue
		}
		live, err := b.liveTokens(ctx, used)
		if err != nil {
			b.log.Warn("cannot look up the sessions' tokens; sessions of revoked tokens end at the next look", "err", err)
			continue
		}
		b.sessions.Range(func(_, v any) bool {
			if as := v.(*agentSession); as.tokensGone(live) {
				b.log.Info("agent session ended: its tokens were revoked or expired", "session", as.ss.ID())
				as.ss.Close()
			}
			return true
		})
	}
}

// busy reports whether the session has a call in flight or waiting for
// approval: such a session is not idle, however long since its last
// request.
func (as *agentSession) busy() bool {
	as.mu.Lock()
	n := len(as.directCalls) + len(as.parked)
	as.mu.Unlock()
	as.calls.mu.Lock()
	n += len(as.calls.calls)
	as.calls.mu.Unlock()
	return n > 0
}

// parkedCall is a call of an agent session parked for approval: the
// agent's id for it, and, while it waits, what abandons it. An approved
// call keeps its entry, without abandon, until it is answered: its id
// stays in use, and a cancellation of it goes to the upstream with the
// call (see directCancel).
type parkedCall struct {
	id      string
	abandon context.CancelCauseFunc
}

// holds reports whether the session has a call the broker serves itself
// (on the direct path, or parked for approval) under the agent's id id.
// Called with mu held.
func (as *agentSession) holds(id string) bool {
	for _, c := range as.directCalls {
		if c.agentID == id {
			return true
		}
	}
	for _, p := range as.parked {
		if p.id == id {
			return true
		}
	}
	return false
}

func (as *agentSession) touch() { as.lastActive.Store(time.Now().UnixNano()) }

// active notes a request on as, and renews its shared record's lifetime
// (which is the idle timeout) every quarter of it: a session in use here
// stays one any replica can take over.
func (b *Broker) active(as *agentSession) {
	as.touch()
	last := as.renewed.Load()
	now := time.Now()
	if last == 0 || now.Sub(time.Unix(0, last)) < b.idle/4 || !as.renewed.CompareAndSwap(last, now.UnixNano()) {
		return
	}
	as.mu.Lock()
	rec := as.shared
	as.mu.Unlock()
	go b.renew(as, rec)
}

// renew saves the session's shared record again, and ends the session if
// the store says it ended: on another replica, whose word of it did not
// reach this one.
func (b *Broker) renew(as *agentSession, rec *SessionRecord) {
	ctx, cancel := context.WithTimeout(context.Background(), renewTimeout)
	defer cancel()
	switch err := b.sessionStore.Save(ctx, as.ss.ID(), *rec, b.idle); {
	case errors.Is(err, ErrSessionEnded):
		b.log.Info("agent session ended: it ended on another replica", "session", as.ss.ID())
		as.gone.Store(true)
		as.ss.Close()
	case err != nil:
		b.log.Warn("session's record for other replicas not renewed; it expires when idle", "err", err)
	}
}

// renewTimeout bounds the renewal of a session's shared record, and its
// deletion.
const renewTimeout = 5 * time.Second

// endedElsewhere ends this replica's copy of session sid, which ended on
// another replica (whose deletion of its record said so): its upstream
// sessions close, and its calls waiting for approval are abandoned.
func (b *Broker) endedElsewhere(sid string) {
	if as := b.sessionByID(sid); as != nil {
		b.log.Info("agent session ended: it ended on another replica", "session", sid)
		as.gone.Store(true)
		as.ss.Close()
	}
}

// bury notes that session sid ended here for good: until its shared
// record would have expired, the replica does not take it over again,
// should the record outlive the session (its deletion is yet to come, or
// failed).
func (b *Broker) bury(sid string) { b.buried.Store(sid, time.Now().Add(b.idle)) }

// isBuried reports whether session sid ended here for good (see bury).
func (b *Broker) isBuried(sid string) bool {
	until, ok := b.buried.Load(sid)
	return ok && time.Now().Before(until.(time.Time))
}

// end abandons the session's direct calls and its calls waiting for
// approval, and returns its upstream sessions for the caller to close,
// together (closeTogether) and outside the lock; the session can open no
// new ones.
func (as *agentSession) end() []*mcp.ClientSession {
	as.mu.Lock()
	defer as.mu.Unlock()
	ups := as.ups
	as.ups, as.direct = nil, nil
	for _, c := range as.directCalls {
		c.cancel()
	}
	for _, p := range as.parked {
		if p.abandon != nil {
			p.abandon(errSessionEnded)
		}
	}
	return slices.Collect(maps.Values(ups))
}

// closeTogether closes every session of css at once and waits for all:
// each close asks an upstream to end its session, which a busy upstream
// may take seconds to do, and one such upstream does not hold up the
// others.
func closeTogether(css []*mcp.ClientSession) {
	var wg sync.WaitGroup
	for _, cs := range css {
		wg.Go(func() { cs.Close() })
	}
	wg.Wait()
}

// agentSession returns the broker's state of an agent session, created on
// first use and dropped, with the upstream sessions, when it ends.
func (b *Broker) agentSession(ss *mcp.ServerSession) *agentSession {
	if v, ok := b.sessions.Load(ss); ok {
		return v.(*agentSession)
	}
	v, loaded := b.sessions.LoadOrStore(ss, newAgentSession(ss))
	as := v.(*agentSession)
	if !loaded {
		sid := ss.ID()
		if sid != "" {
			b.bySID.Store(sid, as)
		}
		go func() {
			ss.Wait()
			// A session ended here (by its agent, or for its tokens) ends
			// on every replica: it is buried before its owner is
			// forgotten, and its record deleted (which tells the other
			// replicas) before its upstream sessions close, which may
			// take seconds, so that no request takes it over meanwhile.
			// Its calls are abandoned first: none may be approved and
			// run while Redis is slow to answer.
			// A replica shutting down leaves its sessions to the others,
			// and so does one that reaped a session for being idle here:
			// the agent may be using it on another replica, and the
			// record expires when the session is idle everywhere.
			forget := b.sessionStore != nil && sid != "" && ss.InitializeParams() != nil && !b.closing.Load() && !as.reaped.Load()
			if forget {
				b.bury(sid)
			}
			b.ending.Store(as, true) // before it leaves sessions: Close waits for it
			b.sessions.Delete(ss)
			// Another copy of the session may have taken its place
			// meanwhile: what is that copy's stays.
			if b.bySID.CompareAndDelete(sid, as) {
				b.disown(sid)
			}
			ups := as.end()
			if forget && !as.gone.Load() {
				ctx, cancel := context.WithTimeout(context.Background(), renewTimeout)
				if err := b.sessionStore.Delete(ctx, sid, b.idle); err != nil {
					b.log.Warn("ended session not forgotten by the other replicas; it expires when idle", "err", err)
				}
				cancel()
			}
			closeTogether(ups)
			b.ending.Delete(as)
			close(as.closed)
		}()
	}
	return as
}

// newAgentSession returns a new state for session ss, active now.
func newAgentSession(ss *mcp.ServerSession) *agentSession {
	as := &agentSession{ss: ss, closed: make(chan struct{}), ups: map[string]*mcp.ClientSession{}, direct: map[string]*directUpstream{},
		connecting: map[string]*connectAttempt{}, directCalls: map[string]*directCall{}, relayed: map[string]relayedRequest{},
		parked: map[string]parkedCall{}, subs: map[string]map[string]bool{}, watching: map[string]*mcp.ClientSession{}}
	as.touch()
	return as
}

// sessionByID returns the state of the agent session with MCP session id
// sid, or nil.
func (b *Broker) sessionByID(sid string) *agentSession {
	if sid == "" {
		return nil
	}
	if v, ok := b.bySID.Load(sid); ok {
		return v.(*agentSession)
	}
	return nil
}

// trackSession is receiving middleware that starts the broker's state of
// a session at initialize, so that every session is reaped when idle, and
// notes the activity of every request the SDK handles, in its session's
// state or its token's.
func (b *Broker) trackSession(next mcp.MethodHandler) mcp.MethodHandler {
	return func(ctx context.Context, method string, req mcp.Request) (mcp.Result, error) {
		if ss, ok := req.GetSession().(*mcp.ServerSession); ok {
			b.noteActive(ctx, ss)
		}
		res, err := next(ctx, method, req)
		if init, ok := req.(*mcp.ServerRequest[*mcp.InitializeParams]); ok && err == nil {
			b.agree(ctx, init.Session, res)
			b.saveSession(ctx, init)
		}
		return res, err
	}
}

// reapIdle closes agent sessions that have gone sessionIdle without a
// request, and with them their upstream sessions, and forgets the
// sessions buried for long enough, until ctx ends.
func (b *Broker) reapIdle(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			b.sessions.Range(func(_, v any) bool {
				as := v.(*agentSession)
				if now.Sub(time.Unix(0, as.lastActive.Load())) > b.idle && !as.busy() {
					as.reaped.Store(true)
					as.ss.Close()
				}
				return true
			})
			b.buried.Range(func(sid, until any) bool {
				if now.After(until.(time.Time)) {
					b.buried.Delete(sid)
				}
				return true
			})
		}
	}
}

// upstreamSession returns the agent session's session with upstream u,
// connecting it on first use. Connecting takes as long as the upstream
// does, and is done without the agent session's lock: the agent's calls to
// other upstreams go on meanwhile, and those to u wait for the one
// connection, and fail with it, rather than each try in turn (an upstream
// that does not answer would keep the last of them waiting for every
// attempt before it).
func (b *Broker) upstreamSession(ctx context.Context, ss *mcp.ServerSession, u *upstream) (*agentSession, *mcp.ClientSession, error) {
	as := b.stateFor(ctx, ss)
	cs, err := b.sessionWith(ctx, as, u)
	if err != nil {
		return nil, nil, err
	}
	return as, cs, nil
}

// sessionWith is upstreamSession for an agent session known to the
// caller, which may have ended since.
func (b *Broker) sessionWith(ctx context.Context, as *agentSession, u *upstream) (*mcp.ClientSession, error) {
	for {
		as.mu.Lock()
		if as.ups == nil {
			as.mu.Unlock()
			return nil, errAgentSessionClosed
		}
		if cs := as.ups[u.Name]; cs != nil {
			as.mu.Unlock()
			return cs, nil
		}
		a := as.connecting[u.Name]
		if a == nil {
			a = &connectAttempt{done: make(chan struct{})}
			as.connecting[u.Name] = a
			as.mu.Unlock()
			cs, err := b.connectFor(ctx, as, u)
			as.mu.Lock()
			delete(as.connecting, u.Name)
			// An attempt its own request gave up on says nothing of the
			// upstream: those waiting try again.
			if err != nil && ctx.Err() == nil {
				a.err = err
			}
			close(a.done)
			as.mu.Unlock()
			if err != nil {
				return nil, err
			}
			return cs, nil
		}
		as.mu.Unlock()
		// Another request of the agent is connecting: use what it gets.
		select {
		case <-a.done:
			if a.err != nil {
				return nil, a.err
			}
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// connectAttempt is one request's connecting of an agent session to an
// upstream, which the agent's other requests there wait for.
type connectAttempt struct {
	done chan struct{} // closed when the attempt is over
	err  error         // why it failed, once done; nil if it did not or was abandoned
}

var errAgentSessionClosed = errors.New("agent session closed")

// connectFor opens the agent session's session with u and keeps it, unless
// the agent session ended meanwhile.
func (b *Broker) connectFor(ctx context.Context, as *agentSession, u *upstream) (*mcp.ClientSession, error) {
	version, opts, relayMW := upstreamClient(as, u.Name)
	// The connection outlives the request that opens it, and must not
	// carry its values: the SDK would route what the upstream asks later
	// to this request's stream.
	connectCtx, cancel := context.WithCancel(context.Background())
	defer context.AfterFunc(ctx, cancel)()
	defer cancel()
	cs, t, err := u.connect(connectCtx, opts, version,
		func(n *jsonrpc.Request) {
			// It runs on the SDK's reader, where a panic would end the
			// process: what one upstream sent must not take every agent
			// down.
			defer func() {
				if v := recover(); v != nil {
					b.log.Error("relaying an upstream notification panicked; dropped", "server", u.Name, "method", n.Method, "panic", v)
				}
			}()
			b.relayNotification(as, u.Name, n)
		}, relayMW)
	if err != nil {
		if errors.As(err, new(setupError)) {
			b.log.Error("cannot prepare a connection to an upstream", "upstream", u.Name, "err", err)
		}
		return nil, err
	}
	// The agent's log level goes to the new session before its first
	// call, so that the upstream logs that call at the level. It is best
	// effort: an upstream that does not answer holds the session, and the
	// calls waiting for it, no longer than connecting may take.
	setLevel := func(level string) {
		ctx, cancel := context.WithTimeout(ctx, u.ConnectTimeout)
		defer cancel()
		b.setLogLevel(ctx, u, cs, level)
	}
	as.mu.Lock()
	level := as.level
	as.mu.Unlock()
	if level != "" {
		setLevel(level)
	}
	// A session before this one was lost: subscribe again.
	resubscribed, err := b.resubscribe(ctx, as, u, cs)
	if err != nil {
		cs.Close()
		return nil, err
	}
	as.mu.Lock()
	closed := as.ups == nil
	if !closed {
		as.ups[u.Name] = cs
		if d := newDirectUpstream(t, cs); d != nil {
			as.direct[u.Name] = d
		}
	}
	now := as.level
	as.mu.Unlock()
	if closed {
		cs.Close()
		return nil, errAgentSessionClosed
	}
	if now != level {
		// The agent set another level while the session was opening.
		setLevel(now)
	}
	// A session the upstream ends (a stdio server that died, say) is let
	// go of at once, so that the next call opens a new one rather than
	// fail on it unsent.
	b.watch(as, u, cs)
	if len(resubscribed) > 0 {
		b.mayHaveChanged(as, u, resubscribed)
	}
	return cs, nil
}

// upstreamClient is the protocol version of the agent's session with
// upstream server, the options of its client, and the middleware that
// relays what the upstream asks of the agent. The upstream session speaks
// the agent's protocol version, so that what the upstream may send
// mid-request (sampling, elicitation) is what the agent can answer; a
// token's has its own (see tokenClient).
func upstreamClient(as *agentSession, server string) (string, *mcp.ClientOptions, mcp.Middleware) {
	if as.ss == nil {
		return tokenClient()
	}
	var version string
	if p := as.ss.InitializeParams(); p != nil {
		version = p.ProtocolVersion
	}
	opts, relayMW := relay(as.ss, func() context.Context { return as.calls.only(server) })
	return version, opts, relayMW
}

// dropUpstreamSession forgets an agent's session with server, if it is
// still cs, so that the next call opens a new one, and closes it in the
// background: closing asks the upstream to end the session, which may
// take it seconds (the SDK gives it 5) while its calls are in flight, and
// neither the call that found the session broken nor the agent's other
// requests wait for that.
func (b *Broker) dropUpstreamSession(as *agentSession, server string, cs *mcp.ClientSession) {
	as.mu.Lock()
	mine := as.ups != nil && as.ups[server] == cs
	if mine {
		delete(as.ups, server)
		delete(as.direct, server)
	}
	as.mu.Unlock()
	if mine {
		b.dropping.Go(func() { cs.Close() })
	}
}
