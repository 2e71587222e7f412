package broker

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
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

// An upstream that restarted, and says its tools changed on a stream of
// the session it forgot: listing fails on that session, which the broker
// closes, and it connects anew and lists again.
func TestCatalogueListingFailsAfterAnUpstreamRestart(t *testing.T) {
	g := newGatewayOver(t, true, func(o *Options) { o.CatalogueRetry = 10 * time.Millisecond })
	cs := g.connect(t, nil)
	g.up.restart()
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

// An upstream that completes the handshake but never answers tools/list
// does not hold up Start: the listing times out like a call, and the
// upstream shows as not connected.
func TestCatalogueListingHasADeadline(t *testing.T) {
	up := newUpstream()
	release := make(chan struct{})
	up.srv.AddReceivingMiddleware(func(next mcp.MethodHandler) mcp.MethodHandler {
		return func(ctx context.Context, method string, req mcp.Request) (mcp.Result, error) {
			if method == "tools/list" {
				select {
				case <-ctx.Done():
				case <-release:
				}
				return nil, errors.New("no answer")
			}
			return next(ctx, method, req)
		}
	})
	signer, _ := authz.NewSigner([]byte(strings.Repeat("k", 32)), nil)
	b, err := New([]Upstream{{Name: "notion", Transport: up.transport, ConnectTimeout: time.Second, CallTimeout: time.Second}},
		signer, fixed{}, &Options{CatalogueRetry: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	go func() { b.Start(context.Background()); close(started) }()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		close(release) // so that the test fails rather than hangs
		<-started
		b.Close()
		t.Fatal("Start waited for an upstream that never lists its tools")
	}
	defer b.Close()
	defer close(release)
	if st := b.Status(); len(st) != 1 || st[0].Connected {
		t.Errorf("status = %+v, want notion not connected", st)
	}
}

// An upstream that declares no tools capability (the TypeScript SDK then
// answers tools/list with "method not found") still has its prompts and
// resources listed.
func TestCatalogueOfAnUpstreamWithoutTools(t *testing.T) {
	srv := mcp.NewServer(&mcp.Implementation{Name: "notion", Version: "1"}, nil)
	srv.AddPrompt(&mcp.Prompt{Name: "summarize", Arguments: []*mcp.PromptArgument{{Name: "page"}}}, func(context.Context, *mcp.GetPromptRequest) (*mcp.GetPromptResult, error) {
		return &mcp.GetPromptResult{}, nil
	})
	srv.AddResource(&mcp.Resource{URI: "notion://ws_abc123/p1", Name: "p1"}, func(context.Context, *mcp.ReadResourceRequest) (*mcp.ReadResourceResult, error) {
		return &mcp.ReadResourceResult{}, nil
	})
	srv.AddReceivingMiddleware(func(next mcp.MethodHandler) mcp.MethodHandler {
		return func(ctx context.Context, method string, req mcp.Request) (mcp.Result, error) {
			if method == "tools/list" {
				return nil, &jsonrpc.Error{Code: jsonrpc.CodeMethodNotFound, Message: "Method not found"}
			}
			return next(ctx, method, req)
		}
	})
	transport := func(ctx context.Context) (mcp.Transport, error) {
		client, server := mcp.NewInMemoryTransports()
		if _, err := srv.Connect(ctx, server, nil); err != nil {
			return nil, err
		}
		return client, nil
	}
	set, err := policy.Compile([]policy.File{{Name: "reader.yaml", Data: []byte(testRole)}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	signer, _ := authz.NewSigner([]byte(strings.Repeat("k", 32)), nil)
	b, err := New([]Upstream{{Name: "notion", Transport: transport}}, signer, fixed{set}, nil)
	if err != nil {
		t.Fatal(err)
	}
	b.Start(context.Background())
	defer b.Close()
	if st := b.Status(); len(st) != 1 || !st[0].Connected || st[0].Prompts != 1 || st[0].Resources != 1 {
		t.Errorf("status = %+v, want notion connected with its prompt and resource", st)
	}
	b.mu.Lock()
	rs := b.roles["reader"]
	prompts, resources := slices.Collect(maps.Keys(rs.prompts)), slices.Collect(maps.Keys(rs.resources))
	b.mu.Unlock()
	if diff := cmp.Diff([]string{"notion__summarize"}, prompts); diff != "" {
		t.Errorf("prompts listed (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"amg:notion:notion://ws_abc123/p1"}, resources); diff != "" {
		t.Errorf("resources listed (-want +got):\n%s", diff)
	}
}
