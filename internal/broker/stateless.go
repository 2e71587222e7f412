package broker

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/amgateway/amg/authz"
	"github.com/amgateway/amg/mcpfilter"
)

// Protocol 2026-07-28 has no sessions: a client begins with server/discover
// rather than initialize, and each request carries in its _meta what the
// client would have said at initialize (its protocol version, identity and
// capabilities). The SDK serves that protocol on a stateless handler only,
// which makes a session for each request and ends it with the request. The
// broker serves such requests on a stateless handler over the same role
// servers, and keeps what an agent session holds across requests (its
// upstream sessions, direct calls and calls waiting for approval) per AMG
// token instead, in a token state: an agentSession without an SDK session.
// A token's state is made on its first request that may reach an upstream
// (usesUpstream) and serves its later ones; it counts as one of its
// agent's sessions (Options.MaxSessionsPerAgent), and ends, with its
// upstream sessions, when idle, when its token is revoked or expires, and
// at Close. Nothing of it serves another token.
//
// What such an agent does not get: an upstream cannot ask it anything
// during a call (sampling, elicitation), since no stream outlives the
// call's own and the SDK lets a stateless server ask nothing; the broker
// refuses such requests to the upstream (noAgentToAsk). Nor does it hear
// of list changes or resource updates: authz refuses subscriptions/listen,
// the protocol's way to ask for them, as it refuses any method it does not
// decide on. Nor does it get an upstream's log messages (logging is
// deprecated from that version on): the level it sends with each request
// does not reach the upstream session, which is the broker's.

// newestWithSessions is the protocol version of a token's upstream
// sessions: the newest that has sessions, which every upstream the broker
// reaches speaks. The agent's requests go upstream without the _meta
// members that say they are of a later version (see requestMetaKeys).
const newestWithSessions = "2025-11-25"

// CodeTokenUnnamed is the broker's refusal of a request without a session
// whose decision names no AMG token (one a replica older than version 2
// decision tokens made): its upstream sessions could not be kept apart
// from other tokens'.
const CodeTokenUnnamed = "token_unnamed"

// tokenStates are the states of the AMG tokens of agents that speak a
// protocol version without sessions, by tokenKey.
type tokenStates struct {
	mu     sync.Mutex
	m      map[string]*agentSession
	closed bool // set by Close: no state is kept after
}

// tokenKey names the state of the token of decision d. The token names its
// agent and role; they are in the key all the same, so that no request
// could be served in the state of another agent or role.
func tokenKey(d authz.Decision) string { return d.TokenID + "\x00" + d.Agent + "\x00" + d.Role }

// statelessRequest reports whether r, whose body is body, is of a protocol
// version without sessions: its MCP-Protocol-Version header, or without
// one its _meta, says so (authz has checked that the two agree), or it
// asks what the gateway serves (server/discover), which only a stateless
// handler answers with those versions too.
func (b *Broker) statelessRequest(r *http.Request, body []byte) bool {
	if v := r.Header.Get("Mcp-Protocol-Version"); v != "" {
		return v >= perRequestFrom
	}
	// Most requests of the versions with sessions carry the header; the
	// others are parsed only if they may be of use.
	if !bytes.Contains(body, []byte(mcpfilter.MetaProtocolVersionKey)) && !bytes.Contains(body, []byte(`"server/discover"`)) {
		return false
	}
	parsed, err := b.envelope(r, body)
	if err != nil || len(parsed.Messages) != 1 {
		return false
	}
	m := &parsed.Messages[0]
	return m.MetaProtocolVersion >= perRequestFrom || m.Kind == mcpfilter.KindRequest && m.Method == "server/discover"
}

// statelessHandler serves the role servers to requests of protocol
// versions without sessions. The request is the call's whole life: an
// agent that goes away has cancelled it, and the upstream is told.
func (b *Broker) statelessHandler() *mcp.StreamableHTTPHandler {
	return mcp.NewStreamableHTTPHandler(b.serverFor, &mcp.StreamableHTTPOptions{
		Stateless:                    true,
		PropagateRequestCancellation: true,
		Logger:                       b.log,
		// As for the session handler (see New).
		DisableLocalhostProtection: true,
		MaxRequestBodyBytes:        int64(b.maxBody),
	})
}

// serveStateless serves a request of a protocol version without sessions,
// which decision d allows, in its token's state.
func (b *Broker) serveStateless(w http.ResponseWriter, r *http.Request, d authz.Decision, body []byte) {
	if d.TokenID == "" {
		const why = "the gateway cannot serve this request: protocol 2026-07-28 is served per AMG token, and its decision names none (a gateway replica older than this one decided it); try again"
		b.record(d, CodeTokenUnnamed, why)
		writeRPCError(w, http.StatusServiceUnavailable, requestID(body), authz.RPCDenied, why)
		return
	}
	// Read as authz read it, as a request without a session is.
	parsed, err := b.envelope(r, body)
	if err != nil {
		b.refuseUnreadable(w, d, err)
		return
	}
	ref := &tokenRef{b: b, d: d}
	if usesUpstream(parsed) {
		if as, n := ref.state(); as == nil {
			why := fmt.Sprintf("agent %q has %d sessions open, as many as the gateway allows it, and each of its tokens that speaks protocol 2026-07-28 counts as one: end a session (DELETE), or let one go idle", d.Agent, n)
			b.record(d, CodeSessionLimit, why)
			writeRPCError(w, http.StatusTooManyRequests, singleID(parsed), authz.RPCRateLimited, why)
			return
		}
	}
	if set := b.policies.Current(); set != nil && set.VersionString() != b.syncedVersion() {
		b.sync()
	}
	r = r.WithContext(context.WithValue(r.Context(), tokenStateKey{}, ref))
	if d.Verdict == "needs_approval" {
		if b.approvals == nil {
			b.record(d, CodeApprovalUnavailable, "approval required but no approval store is configured")
			refuseCall(w, d, body, "this call needs human approval, and no approval store is configured")
			return
		}
		b.park(w, r, ref.known(), d, body)
		return
	}
	// An answer or a cancellation is for the state's calls, if it has any.
	if as := ref.known(); as != nil {
		b.active(as)
		if b.serveDirect(w, r, as, d, body) {
			return
		}
		// The SDK serves the rest, each request in a session of its own:
		// the agent's cancellation of one is for the state to pass on
		// (directCancel).
		if len(parsed.Messages) == 1 && usesUpstream(parsed) {
			var done func()
			r, done = as.trackSDK(r, parsed.Messages[0].ID)
			defer done()
		}
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	b.stateless.ServeHTTP(w, r)
}

// sdkCall is a request of a token's state that the SDK serves, which the
// agent's notifications/cancelled ends by cancel (directCancel): the SDK's
// client then tells the upstream, as when the agent goes away.
type sdkCall struct{ cancel context.CancelFunc }

// trackSDK returns r, a request of the token's state with the agent's id,
// as the SDK is to serve it: such that the agent's notifications/cancelled
// of id ends it (directCancel) until done is called.
func (as *agentSession) trackSDK(r *http.Request, id json.RawMessage) (_ *http.Request, done func()) {
	ctx, cancel := context.WithCancel(r.Context())
	c, key := &sdkCall{cancel: cancel}, string(id)
	as.mu.Lock()
	if as.sdkCalls == nil {
		as.sdkCalls = map[string][]*sdkCall{}
	}
	as.sdkCalls[key] = append(as.sdkCalls[key], c)
	as.mu.Unlock()
	return r.WithContext(ctx), func() {
		as.mu.Lock()
		if calls := slices.DeleteFunc(as.sdkCalls[key], func(o *sdkCall) bool { return o == c }); len(calls) > 0 {
			as.sdkCalls[key] = calls
		} else {
			delete(as.sdkCalls, key)
		}
		as.mu.Unlock()
		cancel()
	}
}

// usesUpstream reports whether parsed is a request that may reach an
// upstream, and so needs its token's state: one the role servers forward
// (a tool call, a prompt, a read or a completion).
func usesUpstream(parsed *mcpfilter.Body) bool {
	if len(parsed.Messages) != 1 || parsed.Messages[0].Kind != mcpfilter.KindRequest {
		return false
	}
	switch parsed.Messages[0].Method {
	case "tools/call", "prompts/get", "resources/read", "completion/complete":
		return true
	}
	return false
}

// tokenRef is a request's way to its token's state, which is made when
// the request first needs it.
type tokenRef struct {
	b  *Broker
	d  authz.Decision
	mu sync.Mutex
	as *agentSession // once known
}

// state returns the token's state, made if it has none; nil, and how many
// sessions the agent has, if it may not have one more.
func (r *tokenRef) state() (*agentSession, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.as == nil {
		as, n := r.b.tokenState(r.d, true)
		if as == nil {
			return nil, n
		}
		r.as = as
	}
	return r.as, 0
}

// known returns the token's state if it has one, else nil.
func (r *tokenRef) known() *agentSession {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.as == nil {
		r.as, _ = r.b.tokenState(r.d, false)
	}
	return r.as
}

// tokenState returns the state of the token of decision d, made if it has
// none and create is set; nil, and how many sessions the agent has, if a new
// state would be one more than the agent may have. After Close, a state is
// made ended, and what needs its upstream sessions fails as in an ended
// session.
func (b *Broker) tokenState(d authz.Decision, create bool) (*agentSession, int) {
	key := tokenKey(d)
	t := &b.byToken
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return endedState(), 0
	}
	if as := t.m[key]; as != nil {
		// Under the lock the reaper looks with: a state handed out is not
		// idle.
		as.touch()
		return as, 0
	}
	if !create {
		return nil, 0
	}
	slot, n := b.reserveSession(d.Agent)
	if slot == nil {
		return nil, n
	}
	slot.take()
	as := newAgentSession(nil)
	as.token, as.agent, as.role = d.TokenID, d.Agent, d.Role
	if t.m == nil {
		t.m = map[string]*agentSession{}
	}
	t.m[key] = as
	return as, 0
}

// endedState is a token state that has ended: what needs its upstream
// sessions fails as in an ended session.
func endedState() *agentSession {
	as := newAgentSession(nil)
	as.ups = nil
	return as
}

// tokenStateKey is the context key of the tokenRef of a request of a
// protocol version without sessions.
type tokenStateKey struct{}

// stateFor is the broker's state for a request the SDK serves in session
// ss: its token's, for a request of a protocol version without sessions,
// else its session's. A token that may not have a state (its agent has
// as many sessions as it may) gets an ended one; serveStateless refuses
// the requests that need one before that.
func (b *Broker) stateFor(ctx context.Context, ss *mcp.ServerSession) *agentSession {
	if ref, ok := ctx.Value(tokenStateKey{}).(*tokenRef); ok {
		if as, _ := ref.state(); as != nil {
			return as
		}
		return endedState()
	}
	return b.agentSession(ss)
}

// noteActive notes a request the SDK serves in session ss as activity of
// its state: its token's, if the token has one, else its session's.
func (b *Broker) noteActive(ctx context.Context, ss *mcp.ServerSession) {
	if ref, ok := ctx.Value(tokenStateKey{}).(*tokenRef); ok {
		if as := ref.known(); as != nil {
			b.active(as)
		}
		return
	}
	b.active(b.agentSession(ss))
}

// keepTokenStates ends, until ctx ends, the token states idle for the
// broker's idle time and, if the broker can tell, those whose tokens were
// revoked or expired, as reapIdle and endRevoked do for sessions.
func (b *Broker) keepTokenStates(ctx context.Context) {
	idle := time.NewTicker(max(b.idle/30, 10*time.Millisecond))
	defer idle.Stop()
	var check <-chan time.Time
	if b.liveTokens != nil {
		t := time.NewTicker(cmp.Or(b.tokenCheck, 10*time.Second))
		defer t.Stop()
		check = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-idle.C:
			b.endTokenStates(func(as *agentSession) bool {
				return now.Sub(time.Unix(0, as.lastActive.Load())) > b.idle && !as.busy()
			})
		case <-check:
			b.endRevokedTokens(ctx)
		}
	}
}

// endRevokedTokens ends the states of the tokens that were revoked or
// expired. A store that cannot be asked ends none: the requests those
// tokens make are refused anyway, and the next look decides.
func (b *Broker) endRevokedTokens(ctx context.Context) {
	t := &b.byToken
	t.mu.Lock()
	ids := make([]string, 0, len(t.m))
	for _, as := range t.m {
		ids = append(ids, as.token)
	}
	t.mu.Unlock()
	if len(ids) == 0 {
		return
	}
	live, err := b.liveTokens(ctx, ids)
	if err != nil {
		b.log.Warn("cannot look up the tokens of agents without sessions; the states of revoked tokens end at the next look", "err", err)
		return
	}
	for _, as := range b.endTokenStates(func(as *agentSession) bool { return !live[as.token] }) {
		b.log.Info("agent state of a token ended: the token was revoked or expired", "agent", as.agent, "token_id", as.token)
	}
}

// endTokenStates ends the token states for which end is true, and returns
// them: they are forgotten at once, and their upstream sessions closed in
// the background, as an ended session's are.
func (b *Broker) endTokenStates(end func(*agentSession) bool) []*agentSession {
	t := &b.byToken
	var ended []*agentSession
	t.mu.Lock()
	for key, as := range t.m {
		if end(as) {
			delete(t.m, key)
			ended = append(ended, as)
		}
	}
	t.mu.Unlock()
	for _, as := range ended {
		b.uncount(as.agent)
		b.dropping.Go(as.closeUpstreams)
	}
	return ended
}

// closeUpstreams ends a token state's upstream sessions and abandons its
// calls (see end), the sessions together and outside the lock.
func (as *agentSession) closeUpstreams() { closeTogether(as.end()) }

// closeTokenStates ends every token state, for Close; no state is kept
// after.
func (b *Broker) closeTokenStates() {
	b.byToken.mu.Lock()
	b.byToken.closed = true
	b.byToken.mu.Unlock()
	b.endTokenStates(func(*agentSession) bool { return true })
}

// tokenClient is the protocol version of a token's upstream sessions, the
// options of their client, and its receiving middleware: it offers the
// upstream nothing (no roots, sampling or elicitation), and refuses, with
// noAgentToAsk, what an upstream asks anyway.
func tokenClient() (string, *mcp.ClientOptions, mcp.Middleware) {
	refuse := func(next mcp.MethodHandler) mcp.MethodHandler {
		return func(ctx context.Context, method string, req mcp.Request) (mcp.Result, error) {
			switch method {
			case "sampling/createMessage", "elicitation/create":
				return nil, noAgentToAsk(method)
			}
			return next(ctx, method, req)
		}
	}
	return newestWithSessions, &mcp.ClientOptions{Capabilities: noRoots()}, refuse
}

// noAgentToAsk is the upstream's answer when it asks an agent without a
// session (method) during a call.
func noAgentToAsk(method string) *jsonrpc.Error {
	return &jsonrpc.Error{Code: authz.RPCDenied, Message: fmt.Sprintf(
		"the gateway refused %s: the agent speaks MCP protocol %s, without a session on which to ask it", method, perRequestFrom)}
}

// refuseRequest answers the upstream's request id, of method, on the
// direct path with noAgentToAsk.
func (d *directUpstream) refuseRequest(ctx context.Context, id []byte, method string) {
	body, _ := json.Marshal(rpcErrorResponse(id, noAgentToAsk(method)))
	if resp, err := d.post(ctx, body, "", ""); err == nil {
		resp.Body.Close()
	}
}

// requestMetaKeys are the _meta members in which a client of protocol
// 2026-07-28 says, on each request, what it would have said at initialize.
// They are its own to the gateway: an upstream session, which the gateway
// opened, speaks the gateway's version and declared the gateway's
// capabilities, and an upstream that serves sessions refuses a request
// that carries them.
//
//lint:ignore SA1019 a member agents of the protocol may still send
var requestMetaKeys = []string{mcp.MetaKeyProtocolVersion, mcp.MetaKeyClientInfo, mcp.MetaKeyClientCapabilities, mcp.MetaKeyLogLevel}

// upstreamMeta is the _meta of an agent's request as its upstream gets it
// on the SDK path: without requestMetaKeys.
func upstreamMeta(m mcp.Meta) mcp.Meta {
	for _, k := range requestMetaKeys {
		if _, ok := m[k]; ok {
			m = maps.Clone(m)
			for _, k := range requestMetaKeys {
				delete(m, k)
			}
			return m
		}
	}
	return m
}

// upstreamMetaEdit is the edit that makes the _meta of the agent's request
// m, in body, as its upstream gets it on the direct path: without
// requestMetaKeys, when it is of a version that has them; else none. The
// rest of _meta goes as it came, but for the order of its members and the
// spaces between them.
func upstreamMetaEdit(body []byte, m *mcpfilter.Message) edit {
	at := m.MetaSpan
	if m.MetaProtocolVersion < perRequestFrom {
		return edit{at, body[at.Start:at.End]}
	}
	var meta map[string]json.RawMessage
	if err := json.Unmarshal(body[at.Start:at.End], &meta); err != nil {
		return edit{at, body[at.Start:at.End]} // Parse took it; the upstream will say
	}
	for _, k := range requestMetaKeys {
		delete(meta, k)
	}
	out, err := json.Marshal(meta)
	if err != nil {
		return edit{at, body[at.Start:at.End]}
	}
	return edit{at, out}
}
