package broker

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/amgateway/amg/internal/policy"
)

// upstreamSubs counts the upstream's subscriptions to uri, and their
// ends.
func (u *upstreamServer) upstreamSubs(uri string) (subs, unsubs int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, s := range u.subs {
		switch s {
		case "+" + uri:
			subs++
		case "-" + uri:
			unsubs++
		}
	}
	return subs, unsubs
}

// An agent's resource subscription outlives its session with the
// upstream: when the upstream restarts and forgets that session, the
// broker opens another and subscribes it again, with no request of the
// agent's; it tells the agent the resource may have changed meanwhile,
// and the upstream's later updates reach the agent.
func TestSubscriptionsOutliveAnUpstreamRestart(t *testing.T) {
	g := newGatewayOver(t, true)
	_, updates := subscribed(t, g)
	const uri = subscribedUpstreamURI
	if n, _ := g.up.upstreamSubs(uri); n != 1 {
		t.Fatalf("the upstream has %d subscriptions, want 1", n)
	}
	g.up.restart()
	g.up.http.CloseClientConnections()
	eventually(t, "the upstream subscribed to again", func() bool { n, _ := g.up.upstreamSubs(uri); return n == 2 })
	select {
	case got := <-updates:
		if got != subscribedURI {
			t.Errorf("update of %s, want %s", got, subscribedURI)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the agent was not told its resource may have changed while its subscription was lost")
	}
	updateReaches(t, g, updates, "after the upstream restarted, its resource update did not reach the agent")
}

// A subscription the agent ended is not renewed, and an agent without
// subscriptions has its upstream session opened again only when it next
// asks for something.
func TestEndedSubscriptionsAreNotRenewed(t *testing.T) {
	g := newGatewayOver(t, true)
	cs, _ := subscribed(t, g)
	if err := cs.Unsubscribe(context.Background(), &mcp.UnsubscribeParams{URI: subscribedURI}); err != nil {
		t.Fatal(err)
	}
	as := g.broker.sessionByID(cs.ID())
	as.mu.Lock()
	lost := as.ups["notion"]
	as.mu.Unlock()
	g.up.restart()
	g.up.http.CloseClientConnections()
	lost.Wait()
	// The watcher, had it been wrong, would have connected at once.
	time.Sleep(200 * time.Millisecond)
	if n, _ := g.up.upstreamSubs(subscribedUpstreamURI); n != 1 {
		t.Errorf("the upstream was subscribed %d times, want once: an ended subscription was renewed", n)
	}
	as.mu.Lock()
	reopened := as.ups["notion"] != nil
	as.mu.Unlock()
	if reopened {
		t.Error("a session with the upstream was opened again for an agent with nothing to renew")
	}
	// The next request opens one.
	if !slices.Contains(toolNames(t, cs), "notion__get_pages") {
		t.Error("the agent's tools are gone after the upstream restarted")
	}
}

// A subscription the restarted upstream refuses ends: the agent's session
// with the upstream is opened all the same, and the subscription is not
// asked for again when that one is lost too.
func TestRefusedResubscriptionEnds(t *testing.T) {
	g := newGatewayOver(t, true)
	cs, _ := subscribed(t, g)
	as := g.broker.sessionByID(cs.ID())
	as.mu.Lock()
	lost := as.ups["notion"]
	as.mu.Unlock()
	g.up.refuseSubs.Store(true)
	g.up.restart()
	g.up.http.CloseClientConnections()
	lost.Wait()
	eventually(t, "a new session with the upstream", func() bool {
		as.mu.Lock()
		defer as.mu.Unlock()
		return as.ups["notion"] != nil && as.ups["notion"] != lost
	})
	as.mu.Lock()
	left := len(as.subs["notion"])
	as.mu.Unlock()
	if left != 0 {
		t.Errorf("%d subscriptions kept after the upstream refused them, want none", left)
	}
}

// A subscription made while the role could read the resource does not
// outlive the grant: its updates stay with the broker, and a lost
// upstream session is not subscribed to it again. The same holds when the
// role is gone from the policy.
func TestSubscriptionEndsWithTheGrant(t *testing.T) {
	for _, tc := range []struct{ name, policy string }{
		{"grant revoked", strings.Replace(testRole, `"notion://ws_abc123/*", `, "", 1)},
		{"role removed", "role: other\nservers:\n  notion:\n    tools:\n      - name: fail\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newGatewayOver(t, true)
			cs, updates := subscribed(t, g)
			set, err := policy.Compile([]policy.File{{Name: "p.yaml", Data: []byte(tc.policy)}}, nil)
			if err != nil {
				t.Fatal(err)
			}
			g.policy.set.Store(set)
			g.broker.Sync()
			if _, err := cs.ReadResource(context.Background(), &mcp.ReadResourceParams{URI: subscribedURI}); err == nil {
				t.Fatal("the resource can still be read: the test tests nothing")
			}
			if err := g.up.srv.ResourceUpdated(context.Background(), &mcp.ResourceUpdatedNotificationParams{URI: subscribedUpstreamURI}); err != nil {
				t.Fatal(err)
			}
			select {
			case u := <-updates:
				t.Errorf("an update of %s reached the agent after its grant ended", u)
			case <-time.After(time.Second):
			}
			// The broker ended the subscription upstream too.
			for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
				if _, unsubs := g.up.upstreamSubs(subscribedUpstreamURI); unsubs == 1 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the upstream still holds the subscription the grant no longer allows")
				}
			}
			if tc.name != "grant revoked" {
				return
			}
			// The upstream forgets the session: the broker opens another,
			// without the subscription, and says nothing of it.
			g.up.restart()
			g.up.http.CloseClientConnections()
			for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
				if n, _ := g.up.upstreamSubs(subscribedUpstreamURI); n > 1 {
					t.Fatalf("subscribed upstream again to a resource the role may no longer read (%d subscriptions)", n)
				}
			}
			select {
			case u := <-updates:
				t.Errorf("after the upstream's restart, %s reached the agent", u)
			default:
			}
		})
	}
}
