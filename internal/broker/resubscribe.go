package broker

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/amgateway/amg/internal/decision"
	"github.com/amgateway/amg/internal/policy"
)

// An agent's resource subscriptions live in its session with each
// upstream. When that session ends without the agent's asking (the
// upstream restarted and forgot it, or the connection broke), the broker
// opens a new one and subscribes it again to what the agent had
// subscribed to, so that updates keep coming. Every upstream session is
// watched (see connectFor): one that ended is let go of at once, and
// opened again then only while the agent has subscriptions there.

// subscribed notes that the agent's session with u, cs, holds a
// subscription to the upstream's uri.
func (b *Broker) subscribed(as *agentSession, u *upstream, cs *mcp.ClientSession, uri string) {
	as.mu.Lock()
	if as.ups == nil {
		as.mu.Unlock()
		return
	}
	if as.subs[u.Name] == nil {
		as.subs[u.Name] = map[string]bool{}
	}
	as.subs[u.Name][uri] = true
	as.mu.Unlock()
	b.watch(as, u, cs)
}

// unsubscribed forgets a subscription, whether or not the upstream has
// heard of its end: the agent wants no more of its updates.
func (as *agentSession) unsubscribed(server, uri string) {
	as.mu.Lock()
	delete(as.subs[server], uri)
	as.mu.Unlock()
}

// watch starts watching cs, unless it is watched already.
func (b *Broker) watch(as *agentSession, u *upstream, cs *mcp.ClientSession) {
	as.mu.Lock()
	start := as.ups != nil && as.watching[u.Name] != cs
	if start {
		as.watching[u.Name] = cs
	}
	as.mu.Unlock()
	if start {
		b.watchers.Go(func() { b.watchUpstream(as, u, cs) })
	}
}

// watchUpstream waits for cs to end. If the agent session lives on, with
// subscriptions there, it opens a new session with u, which subscribes
// again (see resubscribe), trying until it can or the agent session or
// the broker ends.
func (b *Broker) watchUpstream(as *agentSession, u *upstream, cs *mcp.ClientSession) {
	cs.Wait()
	as.mu.Lock()
	if as.watching[u.Name] == cs {
		delete(as.watching, u.Name)
	}
	if as.ups != nil && as.ups[u.Name] == cs {
		// The upstream ended it: the next request opens another.
		delete(as.ups, u.Name)
		delete(as.direct, u.Name)
	}
	again := as.ups != nil && len(as.subs[u.Name]) > 0
	as.mu.Unlock()
	if !again {
		return
	}
	for delay := resubscribeFirstDelay; b.drained.Err() == nil; delay = min(2*delay, resubscribeMaxDelay) {
		ctx, cancel := context.WithTimeout(b.drained, u.ConnectTimeout+u.CallTimeout)
		_, err := b.sessionWith(ctx, as, u)
		cancel()
		if err == nil || errors.Is(err, errAgentSessionClosed) {
			return
		}
		b.log.Warn("agent's session with an upstream lost; subscribing again failed, will retry",
			"upstream", u.Name, "retry_in", delay, "err", errorText(err, false))
		select {
		case <-time.After(delay):
		case <-b.drained.Done():
		}
	}
}

// A lost upstream session is opened again at once; after a failed
// attempt the next waits resubscribeFirstDelay, doubling up to
// resubscribeMaxDelay.
const (
	resubscribeFirstDelay = time.Second
	resubscribeMaxDelay   = 30 * time.Second
)

// resubscribe subscribes cs, a new session with u, to what the agent had
// subscribed to there, and returns those subscriptions. One the upstream
// refuses (its resource may be gone), or the role may no longer read,
// ends, and is forgotten; a failed connection fails it all.
func (b *Broker) resubscribe(ctx context.Context, as *agentSession, u *upstream, cs *mcp.ClientSession) ([]string, error) {
	set, role := b.policies.Current(), b.roleOf(as)
	as.mu.Lock()
	var uris []string
	for uri := range as.subs[u.Name] {
		if decision.ResourceVisible(set, role, u.Name, uri) {
			uris = append(uris, uri)
		} else {
			delete(as.subs[u.Name], uri)
		}
	}
	as.mu.Unlock()
	if len(uris) == 0 {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(ctx, u.CallTimeout)
	defer cancel()
	var kept []string
	for _, uri := range uris {
		err := cs.Subscribe(ctx, &mcp.SubscribeParams{URI: uri})
		var rpcErr *jsonrpc.Error
		switch {
		case err == nil:
			kept = append(kept, uri)
		case errors.As(err, &rpcErr):
			b.log.Warn("upstream refused a subscription the agent had; it ends", "upstream", u.Name, "err", rpcErr.Message)
			as.unsubscribed(u.Name, uri)
		default:
			return nil, err
		}
	}
	return kept, nil
}

// endUngrantedSubscriptions ends, upstream, the agents' subscriptions to
// resources their roles may no longer read under set: their updates would
// go nowhere (see relayNotification), and an upstream need not keep
// sending them.
func (b *Broker) endUngrantedSubscriptions(set *policy.Set) {
	type ended struct {
		cs       *mcp.ClientSession
		uri      string
		upstream *upstream
	}
	var all []ended
	b.sessions.Range(func(_, v any) bool {
		as := v.(*agentSession)
		role := b.roleOf(as)
		as.mu.Lock()
		for server, uris := range as.subs {
			for uri := range uris {
				if decision.ResourceVisible(set, role, server, uri) {
					continue
				}
				delete(uris, uri)
				if cs := as.ups[server]; cs != nil {
					all = append(all, ended{cs, uri, b.ups[server]})
				}
			}
		}
		as.mu.Unlock()
		return true
	})
	for _, e := range all {
		// Not waited for at Close: a draining broker ends them at once.
		go func() {
			ctx, cancel := context.WithTimeout(b.drained, e.upstream.CallTimeout)
			defer cancel()
			if err := e.cs.Unsubscribe(ctx, &mcp.UnsubscribeParams{URI: e.uri}); err != nil {
				b.log.Debug("could not end an ungranted subscription upstream; its updates stay with the gateway", "upstream", e.upstream.Name, "err", errorText(err, false))
			}
		}()
	}
}

// mayHaveChanged tells the agent's role that the resources of uris may
// have changed while no session with u heard their updates.
func (b *Broker) mayHaveChanged(as *agentSession, u *upstream, uris []string) {
	for _, uri := range uris {
		params, _ := json.Marshal(mcp.ResourceUpdatedNotificationParams{URI: uri})
		b.relayNotification(as, u.Name, &jsonrpc.Request{Method: "notifications/resources/updated", Params: params})
	}
}
