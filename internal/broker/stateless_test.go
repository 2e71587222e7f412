//lint:file-ignore SA1019 an agent with a sampling handler, deprecated from protocol 2026-07-28 on, is one that could be asked

package broker

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/amgateway/amg/authz"
	"github.com/amgateway/amg/internal/approval"
	"github.com/amgateway/amg/internal/tokens"
)

// connectStateless connects an agent of protocol 2026-07-28, which has no
// sessions, with token.
func (g *gateway) connectStateless(t *testing.T, token string, opts *mcp.ClientOptions) *mcp.ClientSession {
	t.Helper()
	transport := &mcp.StreamableClientTransport{Endpoint: g.url, HTTPClient: &http.Client{Transport: bearer{token, http.DefaultTransport}}}
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "agent", Version: "1"}, opts).Connect(context.Background(), transport,
		&mcp.ClientSessionOptions{ProtocolVersion: perRequestFrom})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close() })
	if v := cs.InitializeResult().ProtocolVersion; v != perRequestFrom {
		t.Fatalf("served protocol %s, want %s", v, perRequestFrom)
	}
	return cs
}

// newStatelessRawAgent is a raw agent of protocol 2026-07-28.
func newStatelessRawAgent(t *testing.T, g *gateway) *rawAgent {
	return &rawAgent{t: t, url: g.url, token: g.token, version: perRequestFrom}
}

// requestMeta is the _meta a raw agent of protocol 2026-07-28 sends with
// each request, with its members after those.
func requestMeta(more string) string {
	return `{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{"name":"raw","version":"1"},` +
		`"io.modelcontextprotocol/clientCapabilities":{}` + more + `}`
}

// upstreamCalls is what the upstream saw of the calls, prompts and reads
// it served: the session each came in, and its _meta.
type upstreamCalls struct {
	mu       sync.Mutex
	sessions []*mcp.ServerSession
	metas    []mcp.Meta
}

func watchCalls(u *upstreamServer) *upstreamCalls {
	c := &upstreamCalls{}
	u.srv.AddReceivingMiddleware(func(next mcp.MethodHandler) mcp.MethodHandler {
		return func(ctx context.Context, method string, req mcp.Request) (mcp.Result, error) {
			switch method {
			case "tools/call", "prompts/get", "resources/read":
				c.mu.Lock()
				c.sessions = append(c.sessions, req.GetSession().(*mcp.ServerSession))
				c.metas = append(c.metas, req.GetParams().GetMeta())
				c.mu.Unlock()
			}
			return next(ctx, method, req)
		}
	})
	return c
}

// last is the session of the last call the upstream served.
func (c *upstreamCalls) last(t *testing.T) *mcp.ServerSession {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.sessions) == 0 {
		t.Fatal("the upstream served no call")
	}
	return c.sessions[len(c.sessions)-1]
}

// An agent of protocol 2026-07-28 is served that version, and the policy
// as any other agent: what its role may not see is not listed, an allowed
// call gets the upstream's result (on the direct path over HTTP), a
// refused one says why. Its upstream gets none of the _meta members with
// which the agent says, on each request, what it would have said at
// initialize: the upstream session is the gateway's, and an upstream with
// sessions refuses requests that carry them. The agent asks to hear of
// list changes (subscriptions/listen), which authz refuses; it is served
// all the same.
func TestStatelessAgentIsServedAsAnyOther(t *testing.T) {
	bothPaths(t, func(t *testing.T, g *gateway) {
		ctx := context.Background()
		calls := watchCalls(g.up)
		cs := g.connectStateless(t, g.token, &mcp.ClientOptions{ToolListChangedHandler: func(context.Context, *mcp.ToolListChangedRequest) {}})
		if diff := cmp.Diff(toolNames(t, g.connect(t, nil)), toolNames(t, cs)); diff != "" {
			t.Errorf("tools (-with a session +without):\n%s", diff)
		}
		res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "notion__get_pages", Arguments: json.RawMessage(`{"workspace_id":"ws_abc123"}`)})
		if err != nil || res.IsError || res.Content[0].(*mcp.TextContent).Text != "3 pages" {
			t.Fatalf("allowed call: %v %+v", err, res)
		}
		g.checkPath(t, "notion__get_pages")
		for _, tc := range []struct{ tool, args, want string }{
			{"notion__drop_database", `{}`, `tool "notion__drop_database" is not granted to role "reader"`},
			{"notion__get_pages", `{"workspace_id":"ws_abc123","admin":true}`, `argument "admin" is not allowed`},
		} {
			if _, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: tc.tool, Arguments: json.RawMessage(tc.args)}); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s %s: err = %v, want one containing %q", tc.tool, tc.args, err, tc.want)
			}
		}

		prompts, err := cs.ListPrompts(ctx, nil)
		if err != nil || len(prompts.Prompts) != 2 || prompts.Prompts[0].Name != "notion__cite" || prompts.Prompts[1].Name != "notion__summarize" {
			t.Errorf("prompts: %v %+v, want only notion__cite and notion__summarize", err, prompts)
		}
		got, err := cs.GetPrompt(ctx, &mcp.GetPromptParams{Name: "notion__summarize", Arguments: map[string]string{"page": "p1"}})
		if err != nil || got.Messages[0].Content.(*mcp.TextContent).Text != "summarize p1" {
			t.Errorf("prompts/get: %v %+v", err, got)
		}
		if _, err := cs.GetPrompt(ctx, &mcp.GetPromptParams{Name: "notion__secret_prompt"}); err == nil || !strings.Contains(err.Error(), "not granted") {
			t.Errorf("ungranted prompt: %v", err)
		}
		resources, err := cs.ListResources(ctx, nil)
		if err != nil || len(resources.Resources) != 1 || resources.Resources[0].URI != "amg:notion:notion://ws_abc123/p1" {
			t.Errorf("resources: %v %+v, want only amg:notion:notion://ws_abc123/p1", err, resources)
		}
		read, err := cs.ReadResource(ctx, &mcp.ReadResourceParams{URI: "amg:notion:notion://ws_abc123/p1"})
		if err != nil || len(read.Contents) != 1 || read.Contents[0].Text != "page notion://ws_abc123/p1" {
			t.Errorf("resources/read: %v %+v", err, read)
		}
		if _, err := cs.ReadResource(ctx, &mcp.ReadResourceParams{URI: "amg:notion:notion://ws_other/p2"}); err == nil || !strings.Contains(err.Error(), "not granted") {
			t.Errorf("ungranted resource: %v", err)
		}

		calls.mu.Lock()
		defer calls.mu.Unlock()
		if len(calls.metas) != 3 {
			t.Errorf("the upstream served %d calls, prompts and reads, want 3", len(calls.metas))
		}
		for _, meta := range calls.metas {
			for _, k := range requestMetaKeys {
				if _, ok := meta[k]; ok {
					t.Errorf("the upstream got the agent's %s: %v", k, meta)
				}
			}
		}
	})
}

// A token's requests share its upstream sessions, whichever of the
// agent's connections they come on; no other token's request is served
// on them, the agent's other tokens' included.
func TestStatelessUpstreamSessionsAreTheTokens(t *testing.T) {
	bothPaths(t, func(t *testing.T, g *gateway) {
		ctx := context.Background()
		second, _, err := tokens.Issue(ctx, g.tokens, "bot-1", "reader", time.Hour, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		other, _, err := tokens.Issue(ctx, g.tokens, "bot-2", "reader", time.Hour, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		calls := watchCalls(g.up)
		call := func(cs *mcp.ClientSession) *mcp.ServerSession {
			t.Helper()
			res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "notion__get_pages", Arguments: json.RawMessage(`{"workspace_id":"ws_abc123"}`)})
			if err != nil || res.IsError {
				t.Fatalf("call: %v %+v", err, res)
			}
			return calls.last(t)
		}
		first := g.connectStateless(t, g.token, nil)
		mine := call(first)
		if s := call(g.connectStateless(t, g.token, nil)); s != mine {
			t.Error("the token's request on another connection got another upstream session")
		}
		theirs := call(g.connectStateless(t, second, nil))
		if theirs == mine {
			t.Error("the agent's other token was served on the first token's upstream session")
		}
		if s := call(g.connectStateless(t, other, nil)); s == mine || s == theirs {
			t.Error("another agent's token was served on an upstream session of another token")
		}
		if s := call(first); s != mine {
			t.Error("the token's later request got another upstream session")
		}
		g.checkPath(t, "notion__get_pages")
	})
}

// ended reports, on the channel returned, when the upstream session ss
// ends.
func ended(ss *mcp.ServerSession) <-chan struct{} {
	done := make(chan struct{})
	go func() { ss.Wait(); close(done) }()
	return done
}

// awaitEnd waits for the upstream session to end; the deadline only keeps
// a broken test from hanging.
func awaitEnd(t *testing.T, done <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatalf("%s: the token's upstream session did not end", what)
	}
}

// A token's state, and with it its upstream sessions, ends when the token
// is revoked, when it has been idle for the broker's idle time, and when
// the broker closes; it counts as one of its agent's sessions until then.
func TestStatelessStateEnds(t *testing.T) {
	var store atomic.Pointer[tokens.Store] // the gateway's, once it exists
	live := func(ctx context.Context, ids []string) (map[string]bool, error) {
		s := store.Load()
		if s == nil {
			return nil, errors.New("no token store yet")
		}
		return tokens.Live(ctx, *s, ids, time.Now())
	}
	for _, tc := range []struct {
		name string
		opts func(*Options)
		end  func(t *testing.T, g *gateway)
	}{
		{"token revoked", func(o *Options) { o.LiveTokens, o.TokenCheck = live, 10*time.Millisecond }, func(t *testing.T, g *gateway) {
			time.Sleep(100 * time.Millisecond) // ten looks at the live tokens
			if g.tokenStates() != 1 {
				t.Fatal("the state of a live token ended")
			}
			digest, err := tokens.Parse(g.token)
			if err != nil {
				t.Fatal(err)
			}
			if err := g.tokens.Revoke(context.Background(), digest.ID(), time.Now()); err != nil {
				t.Fatal(err)
			}
		}},
		{"idle", func(o *Options) { o.SessionIdle = 500 * time.Millisecond }, func(*testing.T, *gateway) {}},
		{"broker closed", nil, func(t *testing.T, g *gateway) { g.broker.Close() }},
	} {
		for _, overHTTP := range []bool{false, true} {
			t.Run(tc.name+"/"+map[bool]string{false: "sdk", true: "direct"}[overHTTP], func(t *testing.T) {
				var tweaks []func(*Options)
				if tc.opts != nil {
					tweaks = append(tweaks, tc.opts)
				}
				g := newGatewayOver(t, overHTTP, tweaks...)
				store.Store(&g.tokens)
				calls := watchCalls(g.up)
				cs := g.connectStateless(t, g.token, nil)
				if _, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "notion__get_pages", Arguments: json.RawMessage(`{"workspace_id":"ws_abc123"}`)}); err != nil {
					t.Fatal(err)
				}
				done := ended(calls.last(t))
				if n := g.sessionsOf("bot-1"); n != 1 {
					t.Errorf("the agent has %d sessions counted, want its token's state", n)
				}
				tc.end(t, g)
				awaitEnd(t, done, tc.name)
				eventually(t, "the token's state to go", func() bool { return g.tokenStates() == 0 })
				if n := g.sessionsOf("bot-1"); n != 0 {
					t.Errorf("the agent has %d sessions counted after its token's state ended", n)
				}
			})
		}
	}
}

// tokenStates is how many token states the broker keeps.
func (g *gateway) tokenStates() int {
	g.broker.byToken.mu.Lock()
	defer g.broker.byToken.mu.Unlock()
	return len(g.broker.byToken.m)
}

// sessionsOf is how many sessions the broker counts for agent.
func (g *gateway) sessionsOf(agent string) int {
	g.broker.sessionsMu.Lock()
	defer g.broker.sessionsMu.Unlock()
	return g.broker.sessionsOf[agent]
}

// After Close, a request of an agent without sessions that needs an
// upstream is answered with an error, and opens nothing.
func TestStatelessRequestAfterClose(t *testing.T) {
	bothPaths(t, func(t *testing.T, g *gateway) {
		cs := g.connectStateless(t, g.token, nil)
		g.broker.Close()
		_, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "notion__get_pages", Arguments: json.RawMessage(`{"workspace_id":"ws_abc123"}`)})
		if err == nil || !strings.Contains(err.Error(), `upstream "notion": agent session closed`) {
			t.Errorf("err = %v, want the upstream's session closed", err)
		}
		if n := g.tokenStates(); n != 0 {
			t.Errorf("%d token states kept after Close", n)
		}
	})
}

// An upstream cannot ask an agent without a session anything during a
// call: it is offered neither sampling nor elicitation (nor roots), and
// what it asks anyway is refused, saying why, without reaching the agent.
func TestStatelessAgentIsNotAsked(t *testing.T) {
	bothPaths(t, func(t *testing.T, g *gateway) {
		var asked atomic.Int32
		cs := g.connectStateless(t, g.token, &mcp.ClientOptions{
			CreateMessageHandler: func(context.Context, *mcp.CreateMessageRequest) (*mcp.CreateMessageResult, error) {
				asked.Add(1)
				return &mcp.CreateMessageResult{Model: "m", Role: "assistant", Content: &mcp.TextContent{Text: "ship it"}}, nil
			},
			ElicitationHandler: func(context.Context, *mcp.ElicitRequest) (*mcp.ElicitResult, error) {
				asked.Add(1)
				return &mcp.ElicitResult{Action: "accept"}, nil
			},
		})
		ctx := context.Background()
		for tool, want := range map[string]string{
			"notion__offered": "sampling false, tools false; elicitation false; roots false",
			"notion__roots":   "roots offered: false; listed: 0",
		} {
			res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: tool, Arguments: json.RawMessage(`{}`)})
			if err != nil || res.IsError || res.Content[0].(*mcp.TextContent).Text != want {
				t.Errorf("%s: %v %+v, want %q", tool, err, res, want)
			}
		}
		res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "notion__ask", Arguments: json.RawMessage(`{}`)})
		const want = "the gateway refused sampling/createMessage: the agent speaks MCP protocol 2026-07-28, without a session on which to ask it"
		if err == nil && res.IsError {
			err = errors.New(res.Content[0].(*mcp.TextContent).Text)
		}
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("asking the agent: %v %+v, want the error %q", err, res, want)
		}
		g.checkPath(t, "notion__ask")
		if n := asked.Load(); n != 0 {
			t.Errorf("the agent was asked %d times", n)
		}
	})
}

// An upstream that does not take the refusal of what it asks an agent
// without a session holds up neither the call's stream nor its timeout.
func TestStatelessRefusalDoesNotHoldTheCall(t *testing.T) {
	g := newGatewayTimed(t, true, time.Second, nil)
	refusal := func(body []byte) bool {
		return strings.Contains(string(body), "the gateway refused sampling/createMessage")
	}
	g.up.holding.Store(&refusal)
	warmStateless(t, g.connectStateless(t, g.token, nil))
	// A failsafe, far beyond the call timeout.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	got := newStatelessRawAgent(t, g).read(ctx, `{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"notion__ask","arguments":{},"_meta":`+requestMeta("")+`}}`)
	if !strings.Contains(got, `"id":9`) || !strings.Contains(got, `upstream \"notion\" did not answer in time`) {
		t.Fatalf("a call whose upstream does not take the refusal of its request: %.300q", got)
	}
	g.checkPath(t, "notion__ask")
}

// Progress an upstream reports on a call reaches an agent without a
// session on the call's stream, before the result; log messages, which
// its protocol has not, do not.
func TestStatelessProgress(t *testing.T) {
	bothPaths(t, func(t *testing.T, g *gateway) {
		a := newStatelessRawAgent(t, g)
		got := a.post(`{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"notion__slow","arguments":{},"_meta":` + requestMeta(`,"progressToken":"p-3"`) + `}}`)
		var kinds []string
		for _, m := range got {
			var msg struct {
				Method string
				ID     json.RawMessage
				Params struct{ ProgressToken any }
			}
			json.Unmarshal([]byte(m), &msg)
			switch {
			case msg.Method == "notifications/progress" && msg.Params.ProgressToken == "p-3":
				kinds = append(kinds, "progress")
			case string(msg.ID) == "3" && strings.Contains(m, `"text":"done"`):
				kinds = append(kinds, "result")
			default:
				kinds = append(kinds, m)
			}
		}
		if want := []string{"progress", "progress", "result"}; !slices.Equal(kinds, want) {
			t.Errorf("messages on the call's stream = %q, want %q", kinds, want)
		}
		g.checkPath(t, "notion__slow")
	})
}

// An agent without a session that gives up on a call cancels it upstream,
// long before the call's timeout. The go-sdk's client both sends
// notifications/cancelled and goes away; each alone does it too
// (TestStatelessNotificationCancelsTheCall,
// TestStatelessClosedRequestCancelsTheCall).
func TestStatelessCancellationReachesTheUpstream(t *testing.T) {
	statelessPaths(t, func(t *testing.T, g *gateway) {
		cs := g.connectStateless(t, g.token, nil)
		warmStateless(t, cs)
		cancelledCallReachesUpstream(t, g, cs)
	})
}

// statelessPaths runs test on both paths, with a call timeout far beyond
// the test's waits.
func statelessPaths(t *testing.T, test func(t *testing.T, g *gateway)) {
	for _, overHTTP := range []bool{false, true} {
		t.Run(map[bool]string{false: "sdk", true: "direct"}[overHTTP], func(t *testing.T) {
			test(t, newGatewayTimed(t, overHTTP, time.Minute, nil))
		})
	}
}

// warmStateless makes a first call as an agent without a session, which
// makes its token's state and opens its upstream session.
func warmStateless(t *testing.T, cs *mcp.ClientSession) {
	t.Helper()
	if _, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "notion__get_pages", Arguments: json.RawMessage(`{"workspace_id":"ws_abc123"}`)}); err != nil {
		t.Fatal(err)
	}
}

// statelessWait is a raw agent's call, without a session, of the
// upstream's wait tool.
var statelessWait = `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"notion__wait","arguments":{},"_meta":` + requestMeta("") + `}}`

// An agent without a session that closes its request has cancelled the
// call, its request being the call's whole life: the upstream is told, on
// either path.
func TestStatelessClosedRequestCancelsTheCall(t *testing.T) {
	statelessPaths(t, func(t *testing.T, g *gateway) {
		warmStateless(t, g.connectStateless(t, g.token, nil))
		ctx, cancel := context.WithCancel(context.Background())
		newStatelessRawAgent(t, g).postUntil(ctx, statelessWait)
		<-g.up.started
		cancel()
		g.up.awaitCancelled(t, "the agent closed its request; the upstream's call was not cancelled")
		g.checkPath(t, "notion__wait")
	})
}

// statelessCancel is a raw agent's cancellation, without a session, of
// statelessWait.
var statelessCancel = `{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":7,"reason":"no longer needed","_meta":` + requestMeta("") + `}}`

// An agent without a session that cancels a call with
// notifications/cancelled, its request still open, has it cancelled
// upstream, on either path.
func TestStatelessNotificationCancelsTheCall(t *testing.T) {
	statelessPaths(t, func(t *testing.T, g *gateway) {
		warmStateless(t, g.connectStateless(t, g.token, nil))
		a := newStatelessRawAgent(t, g)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		a.postUntil(ctx, statelessWait)
		<-g.up.started
		a.post(statelessCancel)
		g.up.awaitCancelled(t, "the agent cancelled its call; the upstream's call was not cancelled")
		g.checkPath(t, "notion__wait")
	})
}

// The token's clients choose their ids apart from each other: on the SDK
// path, a call that ends forgets only itself, and leaves another under
// the same id to the agent's cancellation.
func TestStatelessCallsUnderOneID(t *testing.T) {
	g := newGatewayTimed(t, false, time.Minute, nil)
	warmStateless(t, g.connectStateless(t, g.token, nil))
	a := newStatelessRawAgent(t, g)
	first, cancelFirst := context.WithCancel(context.Background())
	defer cancelFirst()
	a.postUntil(first, statelessWait)
	<-g.up.started
	second, cancelSecond := context.WithCancel(context.Background())
	defer cancelSecond()
	a.postUntil(second, statelessWait)
	<-g.up.started
	cancelFirst()
	<-g.up.cancelled
	eventually(t, "the first call to end", func() bool { return g.sdkCalls(`7`) < 2 })
	a.post(statelessCancel)
	g.up.awaitCancelled(t, "the agent cancelled its one call with id 7; the upstream's call was not cancelled")
}

// sdkCalls is how many requests under the agent's id the token states
// have on the SDK path.
func (g *gateway) sdkCalls(id string) int {
	g.broker.byToken.mu.Lock()
	defer g.broker.byToken.mu.Unlock()
	n := 0
	for _, as := range g.broker.byToken.m {
		as.mu.Lock()
		n += len(as.sdkCalls[id])
		as.mu.Unlock()
	}
	return n
}

// A call of an agent without a session that needs approval waits for it,
// and approved runs once: over HTTP the upstream gets the agent's bytes
// (its arguments as written), through the SDK the same arguments without
// the spaces between their tokens; neither with the agent's per-request
// _meta members. Every step is audited under the approval's id, naming
// the agent and role.
func TestStatelessApprovedCallRunsOnce(t *testing.T) {
	approvalPaths(t, func(t *testing.T, g *gateway, store approval.Store, args, want string) {
		calls := watchCalls(g.up)
		body := `{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"notion__delete_page","arguments":` + args + `,"_meta":` + requestMeta("") + `}}`
		testApprovedCallRunsOnce(t, g, store, newStatelessRawAgent(t, g), body, want)
		calls.mu.Lock()
		defer calls.mu.Unlock()
		if len(calls.metas) != 1 || len(calls.metas[0]) != 0 {
			t.Errorf("the upstream got the call with _meta %v, want none", calls.metas)
		}
	})
}

// The independent clients of one token may use one id at once: their
// calls waiting for approval are each kept, a cancellation that names
// both cancels neither (which one is meant cannot be told) and is refused
// saying so, and each client's going away abandons its own call only.
func TestStatelessCallsUnderOneIDAreKeptApart(t *testing.T) {
	store := approval.NewMemory(nil)
	g := parkedGatewayOver(t, false, store)
	call := func(page string) string {
		return `{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"notion__delete_page","arguments":{"page_id":"` + page + `"},"_meta":` + requestMeta("") + `}}`
	}
	cancelled := `{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":42,"_meta":` + requestMeta("") + `}}`
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ctx1, leave := context.WithCancel(ctx)
	one, two := newStatelessRawAgent(t, g), newStatelessRawAgent(t, g)
	one.postUntil(ctx1, call("pg_1"))
	first := parkedOne(t, store)
	two.postUntil(ctx, call("pg_2"))
	var second *approval.Approval
	eventually(t, "the second client's call parked", func() bool {
		list, _ := store.List(context.Background(), approval.Pending)
		for _, p := range list {
			if p.ID != first.ID {
				second = p
			}
		}
		return second != nil
	})
	resp, err := two.send(ctx, cancelled)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(data), "request 42 not cancelled: 2 calls in flight or waiting for approval have that id") {
		t.Errorf("a cancellation naming two calls: HTTP %d: %s", resp.StatusCode, data)
	}
	if codes := g.audit.Codes(); !slices.Contains(codes, CodeCancelAmbiguous) {
		t.Errorf("audit codes %v: the refused cancellation is not among them", codes)
	}
	for _, p := range []*approval.Approval{first, second} {
		if got, _ := store.Get(context.Background(), p.ID); got.State != approval.Pending {
			t.Errorf("approval %s is %s after a cancellation naming two calls, want pending", p.Body, got.State)
		}
	}
	leave()
	awaitState(t, store, first.ID, approval.Cancelled)
	if got, _ := store.Get(context.Background(), second.ID); got.State != approval.Pending {
		t.Errorf("the second client's call is %s after the first client went away, want pending", got.State)
	}
	// Now the id names one call: the cancellation reaches it.
	if got := two.read(ctx, cancelled); got != "" {
		t.Errorf("a cancellation naming one call: %s", got)
	}
	awaitState(t, store, second.ID, approval.Cancelled)
	if d := g.deletions(); len(d) != 0 {
		t.Errorf("a call ran: %v", d)
	}
}

// A request without a session is refused, and audited, when its decision
// names no token (a replica older than decision tokens of version 2 made
// it), and when it needs its token's state (it may reach an upstream) and
// that would be one more than its agent may have; one that does not is
// served.
func TestStatelessRefusals(t *testing.T) {
	t.Run("no token", func(t *testing.T) {
		g := newGateway(t)
		body := `{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":` + requestMeta("") + `}}`
		tok := g.signer.Sign(authz.Decision{ID: "d1", Agent: "bot-1", Role: "reader", Verdict: "allow", BodySHA256: sha256.Sum256([]byte(body)), Method: "POST"})
		status, answer := postMCP(t, g.brokerURL, map[string]string{authz.HeaderDecision: tok, authz.HeaderAgent: "bot-1", authz.HeaderRole: "reader",
			authz.HeaderDecisionID: "d1", "Mcp-Protocol-Version": perRequestFrom, "Mcp-Method": "tools/list"}, body)
		if status != http.StatusServiceUnavailable || !strings.Contains(answer, `"id":1`) || !strings.Contains(answer, "its decision names none") {
			t.Errorf("status %d, %s", status, answer)
		}
		if diff := cmp.Diff([]string{CodeTokenUnnamed}, g.audit.Codes()); diff != "" {
			t.Errorf("broker audit codes (-want +got):\n%s", diff)
		}
	})
	t.Run("session limit", func(t *testing.T) {
		g := newGatewayOver(t, false, func(o *Options) { o.MaxSessionsPerAgent = 1 })
		newRawAgent(t, g) // the agent's one session
		list := `{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":` + requestMeta("") + `}}`
		if status, answer := postMCP(t, g.url, map[string]string{"Authorization": "Bearer " + g.token,
			"Mcp-Protocol-Version": perRequestFrom, "Mcp-Method": "tools/list"}, list); status != http.StatusOK || !strings.Contains(answer, "notion__get_pages") {
			t.Errorf("tools/list at the limit: %d %s", status, answer)
		}
		body := `{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"notion__get_pages","arguments":{"workspace_id":"ws_abc123"},"_meta":` + requestMeta("") + `}}`
		status, answer := postMCP(t, g.url, map[string]string{"Authorization": "Bearer " + g.token,
			"Mcp-Protocol-Version": perRequestFrom, "Mcp-Method": "tools/call", "Mcp-Name": "notion__get_pages"}, body)
		if status != http.StatusTooManyRequests || !strings.Contains(answer, `"id":2`) ||
			!strings.Contains(answer, `agent \"bot-1\" has 1 sessions open, as many as the gateway allows it`) {
			t.Errorf("status %d, %s", status, answer)
		}
		if diff := cmp.Diff([]string{CodeSessionLimit}, g.audit.Codes()); diff != "" {
			t.Errorf("broker audit codes (-want +got):\n%s", diff)
		}
	})
}

// Without Options.Sessionless, an agent that asks for 2026-07-28 is
// offered the versions with sessions, and the go-sdk's client takes the
// newest of them, with all a session brings.
func TestSessionlessIsOptIn(t *testing.T) {
	g := newGatewayOver(t, true, func(o *Options) { o.Sessionless = false })
	transport := &mcp.StreamableClientTransport{Endpoint: g.url, HTTPClient: &http.Client{Transport: bearer{g.token, http.DefaultTransport}}}
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "agent", Version: "1"}, nil).Connect(context.Background(), transport,
		&mcp.ClientSessionOptions{ProtocolVersion: perRequestFrom})
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	if v := cs.InitializeResult().ProtocolVersion; v != sessionVersion {
		t.Errorf("served protocol %s, want %s", v, sessionVersion)
	}
	if cs.ID() == "" {
		t.Error("the agent has no session")
	}
	res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "notion__get_pages", Arguments: json.RawMessage(`{"workspace_id":"ws_abc123"}`)})
	if err != nil || res.IsError {
		t.Errorf("allowed call: %v %+v", err, res)
	}
}
