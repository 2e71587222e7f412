package broker

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/amgateway/amg/authz"
	"github.com/amgateway/amg/internal/policy"
)

// eventually polls cond for up to 10 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for range 1000 {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("never: %s", what)
}

// An upstream that cannot be reached when the broker starts has its
// tools listed once it answers, without a restart of the gateway.
func TestCatalogueOfAnUpstreamDownAtStart(t *testing.T) {
	up := newUpstream()
	var down atomic.Bool
	down.Store(true)
	transport := func(ctx context.Context) (mcp.Transport, error) {
		if down.Load() {
			return nil, errors.New("connection refused")
		}
		return up.transport(ctx)
	}
	signer, _ := authz.NewSigner([]byte(strings.Repeat("k", 32)), nil)
	b, err := New([]Upstream{{Name: "notion", Transport: transport}}, signer, fixed{}, &Options{CatalogueRetry: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	b.Start(context.Background())
	defer b.Close()
	if tools, ok := b.Tools("notion"); ok {
		t.Fatalf("an upstream that is down lists %d tools", len(tools))
	}
	down.Store(false)
	eventually(t, "the upstream's tools listed once it answers", func() bool {
		tools, ok := b.Tools("notion")
		return ok && slices.ContainsFunc(tools, func(tl policy.Tool) bool { return tl.Name == "get_pages" })
	})
	if st := b.Status(); len(st) != 1 || !st[0].Connected || st[0].Tools == 0 {
		t.Errorf("status = %+v", st)
	}
}

// An upstream that restarts forgets the broker's catalogue session, and
// with it the notifications of what changed meanwhile. The broker
// connects anew and lists again: a tool added while it was down reaches
// the agents.
func TestCatalogueAfterAnUpstreamRestart(t *testing.T) {
	g := newGatewayOver(t, true, func(o *Options) { o.CatalogueRetry = 10 * time.Millisecond })
	cs := g.connect(t, nil)
	if slices.Contains(toolNames(t, cs), "notion__late_tool") {
		t.Fatal("late_tool listed before the upstream has it")
	}
	g.up.restart()
	g.up.http.CloseClientConnections()
	g.up.srv.AddTool(&mcp.Tool{Name: "late_tool", InputSchema: json.RawMessage(`{"type":"object"}`)}, func(context.Context, *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		return &mcp.CallToolResult{}, nil
	})
	eventually(t, "late_tool listed to the agent after the upstream restarted", func() bool {
		return slices.Contains(toolNames(t, cs), "notion__late_tool")
	})
}

// Decisions read the catalogue (annotations) on every call, and the
// console reads its status: neither waits while the broker is connecting
// to an upstream that is slow to answer.
func TestCatalogueReadsDoNotWaitOnTheUpstream(t *testing.T) {
	up := newUpstream()
	var slow atomic.Bool
	entered, release := make(chan struct{}, 1), make(chan struct{})
	transport := func(ctx context.Context) (mcp.Transport, error) {
		if slow.Load() {
			entered <- struct{}{}
			select {
			case <-release:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		return up.transport(ctx)
	}
	signer, _ := authz.NewSigner([]byte(strings.Repeat("k", 32)), nil)
	b, err := New([]Upstream{{Name: "notion", Transport: transport, ConnectTimeout: time.Minute}}, signer, fixed{},
		&Options{CatalogueRetry: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	b.Start(context.Background())
	defer b.Close()
	// The catalogue session ends, and connecting anew hangs.
	slow.Store(true)
	u := b.ups["notion"]
	u.mu.Lock()
	cs := u.catalog
	u.mu.Unlock()
	cs.Close()
	<-entered
	// Should a read wait for the connection, the connection is let
	// through after a while, so that the test fails rather than hangs.
	failsafe := time.AfterFunc(10*time.Second, func() { close(release) })
	b.Status()
	b.Annotations("notion", "get_pages")
	b.Tools("notion")
	if !failsafe.Stop() {
		t.Fatal("reading the catalogue waited while the broker connected to the upstream")
	}
	close(release)
}

// Close ends the catalogue sessions all at once, as an ended agent session
// does its upstream sessions.
func TestCloseEndsTheCataloguesTogether(t *testing.T) {
	files := newUpstream()
	g := newGatewayTimed(t, true, 5*time.Second, []Upstream{{Name: "files", Transport: files.serveHTTP(t)}})
	notionDeletes, filesDeletes := g.up.holdDeletes(), files.holdDeletes()
	// As in TestEndedSessionClosesItsUpstreamSessionsTogether.
	failsafe := time.AfterFunc(3*time.Second, func() { close(notionDeletes); close(filesDeletes) })
	closed := make(chan struct{})
	go func() { g.broker.Close(); close(closed) }()
	<-g.up.deleting
	<-files.deleting
	if !failsafe.Stop() {
		t.Fatal("the catalogue sessions were closed one after the other")
	}
	close(notionDeletes)
	close(filesDeletes)
	<-closed
}
