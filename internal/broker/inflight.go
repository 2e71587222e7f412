//lint:file-ignore SA1019 log messages are relayed for the protocol versions that have them

package broker

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/amgateway/amg/internal/decision"
)

// inflight is what one agent session has in flight upstream: each
// request's session and context (which names the agent's stream for it)
// and progress token, so that what an upstream says about a request while
// it runs reaches the agent on that request's stream, before its result.
// The requests of a token's state (stateless.go) each have a session of
// their own.
type inflight struct {
	mu    sync.Mutex
	calls []*pending
}

type pending struct {
	ss     *mcp.ServerSession // nil: none to tell
	ctx    context.Context
	server string
	token  any // the agent's progress token; nil if it asked for none
}

// progressKey is token as a key to match progress by, or nil. The
// protocol's tokens are strings and integers; anything else an agent or
// upstream sends (a JSON object, array or bool: maps, slices and bools to
// the decoder, and maps and slices cannot be compared) is no token.
func progressKey(token any) any {
	switch token.(type) {
	case string, float64, int, int32, int64, json.Number:
		return token
	}
	return nil
}

// add records a request of session ss to server until the returned func
// is called.
func (f *inflight) add(ctx context.Context, ss *mcp.ServerSession, server string, token any) (done func()) {
	p := &pending{ss: ss, ctx: ctx, server: server, token: progressKey(token)}
	f.mu.Lock()
	f.calls = append(f.calls, p)
	f.mu.Unlock()
	return func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		for i, q := range f.calls {
			if q == p {
				f.calls = append(f.calls[:i], f.calls[i+1:]...)
				return
			}
		}
	}
}

// byToken returns the request to server that asked for progress under
// token.
func (f *inflight) byToken(server string, token any) (*pending, bool) {
	if token = progressKey(token); token == nil {
		return nil, false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range f.calls {
		if p.server == server && p.token == token {
			return p, true
		}
	}
	return nil, false
}

// only returns the context of the one request to server in flight; with
// none or several, a log message cannot be tied to a request and goes to
// the agent's session stream instead.
func (f *inflight) only(server string) context.Context {
	f.mu.Lock()
	defer f.mu.Unlock()
	var found context.Context
	for _, p := range f.calls {
		if p.server == server {
			if found != nil {
				return context.Background()
			}
			found = p.ctx
		}
	}
	if found == nil {
		return context.Background()
	}
	return found
}

// relay passes a notification from the agent's upstream session with
// server to the agent: progress for a request still in flight (the
// upstream session is this agent's alone, so the token cannot be another
// agent's) and log messages, which the SDK filters by the level the agent
// set in its session ss (nil for a token's state, whose agent sets none:
// see stateless.go), and the end of a URL-mode elicitation, to an agent
// that declared it can be asked those (urlElicitation). List changes are
// handled by the catalogue session; other notifications stay with the
// broker.
func (f *inflight) relay(ss *mcp.ServerSession, server string, n *jsonrpc.Request) {
	switch n.Method {
	case "notifications/progress":
		var p mcp.ProgressNotificationParams
		if json.Unmarshal(n.Params, &p) != nil {
			return
		}
		if call, ok := f.byToken(server, p.ProgressToken); ok && call.ss != nil {
			call.ss.NotifyProgress(call.ctx, &p)
		}
	case "notifications/message":
		var p mcp.LoggingMessageParams
		if ss == nil || json.Unmarshal(n.Params, &p) != nil {
			return
		}
		ss.Log(f.only(server), &p)
	case "notifications/elicitation/complete":
		// The upstream session is this agent's alone: whatever id it
		// names, the notification reaches no other agent.
		var p mcp.ElicitationCompleteParams
		if !urlElicitation(ss) || json.Unmarshal(n.Params, &p) != nil || p.ElicitationID == "" {
			return
		}
		ss.NotifyElicitationComplete(f.only(server), &p)
	}
}

// urlElicitation reports whether the agent of session ss declared URL-mode
// elicitation at initialize: only then was its upstream offered it (see
// upstreamCapabilities), and may the agent be told one ended. An agent
// without a session (ss nil) cannot be asked anything.
func urlElicitation(ss *mcp.ServerSession) bool {
	if ss == nil {
		return false
	}
	p := ss.InitializeParams()
	return p != nil && p.Capabilities != nil && p.Capabilities.Elicitation != nil && p.Capabilities.Elicitation.URL != nil
}

// relayNotification passes on what an agent's upstream session with server
// announces: a resource update goes to the role's sessions subscribed to
// the resource (under the URI agents see); the rest goes by the calls in
// flight (see inflight.relay).
func (b *Broker) relayNotification(as *agentSession, server string, n *jsonrpc.Request) {
	switch n.Method {
	case "notifications/resources/updated":
	case "notifications/cancelled":
		b.relayCancellation(as, server, n.Params)
		return
	default:
		as.calls.relay(as.ss, server, n)
		return
	}
	var p mcp.ResourceUpdatedNotificationParams
	if json.Unmarshal(n.Params, &p) != nil || p.URI == "" {
		return
	}
	role := b.roleOf(as)
	if !decision.ResourceVisible(b.policies.Current(), role, server, p.URI) {
		// Not, or no longer, the role's to know of: a subscription made
		// while it was stays with the broker.
		return
	}
	uri := b.ns.JoinURI(server, p.URI)
	// Every session of the role that subscribed has its own upstream
	// subscription, and so its own copy of the update; the SDK sends one
	// to all of them, so copies that other sessions hear within a moment
	// are dropped. The session whose copy was relayed hears only genuine
	// updates, however close together: each of those is relayed.
	key := role + "\x00" + uri
	now := time.Now()
	b.mu.Lock()
	rs := b.roles[role]
	if last := b.updated[key]; last.from != as && now.Sub(last.at) < updateDedup {
		b.mu.Unlock()
		return
	}
	if b.updated == nil || len(b.updated) > 4096 {
		b.updated = map[string]relayedUpdate{} // older entries no longer matter
	}
	b.updated[key] = relayedUpdate{at: now, from: as}
	b.mu.Unlock()
	if rs != nil {
		rs.srv.ResourceUpdated(context.Background(), &mcp.ResourceUpdatedNotificationParams{URI: uri})
	}
}

// roleOf is the role of the agent whose session (or token's state) as is.
func (b *Broker) roleOf(as *agentSession) string {
	if as.ss == nil {
		return as.role
	}
	owner, _ := b.owners.Load(as.ss.ID())
	o, _ := owner.(string)
	_, role, _ := strings.Cut(o, "\x00")
	return role
}

// updateDedup is how close together copies of one resource update count as
// one.
const updateDedup = 250 * time.Millisecond

// relayedUpdate is when a resource update was last relayed to a role's
// sessions, and whose upstream subscription it came from.
type relayedUpdate struct {
	at   time.Time
	from *agentSession
}
