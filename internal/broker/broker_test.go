//lint:file-ignore SA1019 the gateway relays sampling, deprecated from protocol 2026-07-28 on, for the versions that have it

package broker

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/amgateway/amg/authz"
	"github.com/amgateway/amg/internal/audit"
	"github.com/amgateway/amg/internal/audit/audittest"
	"github.com/amgateway/amg/internal/front"
	"github.com/amgateway/amg/internal/policy"
	"github.com/amgateway/amg/internal/ratelimit"
	"github.com/amgateway/amg/internal/syncbuf"
	"github.com/amgateway/amg/internal/tokens"
	"github.com/amgateway/amg/mcpfilter"
)

const testRole = `
role: reader
servers:
  notion:
    tools:
      - name: get_pages
        constraints:
          workspace_id: { eq: ws_abc123 }
          limit: { lte: 100, optional: true }
      - name: fail
      - name: refuse
      - name: late_tool
      - name: ask
      - name: roots
      - name: offered
      - name: sample_with_tools
      - name: slow
      - name: wait
      - name: big
      - name: links
      - name: sign_in
      - name: delete_page
        constraints: { page_id: {} }
    prompts:
      - name: summarize
        constraints: { page: {} }
      - name: cite
    resources: ["notion://ws_abc123/*", "notion://ws_abc123/drafts/*"]
  files:
    tools:
      - name: get_pages
        constraints: { workspace_id: {}, limit: { optional: true } }
      - name: slow
      - name: fail
      - name: big
approvals:
  - match: "delete*"
    require: human
    timeout: 10m
`

// upstreamServer is a go-sdk MCP server standing in for an upstream; it
// records the raw arguments of every call.
type upstreamServer struct {
	srv     *mcp.Server
	mu      sync.Mutex
	args    []string
	deleted []string // the raw arguments of every delete_page call
	subs    []string // "+uri" for a subscription, "-uri" for its end
	// refuseSubs makes the upstream refuse subscriptions.
	refuseSubs atomic.Bool
	// started and cancelled receive when a call of wait begins, and when
	// it sees its context end; a wait, or an ask's request of the agent,
	// still running when the test ends ends with stop, so that the server
	// can close.
	started, cancelled, stop chan struct{}
	// deletes, if set, holds the HTTP upstream's DELETE requests until it
	// is closed; each one held is first announced on deleting.
	deletes, deleting chan struct{}
	// Served over HTTP: the server, its MCP handler, and the body of every
	// POST it received.
	http    *httptest.Server
	handler http.Handler
	posts   []string
	// jsonAnswers, set before serveHTTP, makes the server answer each
	// request with one JSON body rather than an event stream; callsTo,
	// when set, answers every tools/call in its place.
	jsonAnswers bool
	// stateless, set before serveHTTP, serves without sessions, and so
	// 2026-07-28 too, which the SDK serves only so.
	stateless bool
	// resumable, set before serveHTTP, keeps the events of every stream,
	// so that a client may resume one the server ended.
	resumable bool
	callsTo   atomic.Pointer[http.HandlerFunc]
	// resumesTo, when set, answers every request to resume a stream (GET
	// with Last-Event-ID) in the handler's place.
	resumesTo atomic.Pointer[http.HandlerFunc]
	// holding, when set, holds every POST whose body it matches until the
	// test ends (stop), never answered.
	holding atomic.Pointer[func(body []byte) bool]
	// conns counts the connections made to the HTTP upstream; closed, the
	// streams of callStream's answers that their readers closed, and
	// drained, those of them read to their end first.
	conns, closed, drained atomic.Int32
}

// bigResult is the size of the big tool's text, more than the broker holds
// of an event it only observes.
const bigResult = 6 << 20

func newUpstream() *upstreamServer {
	u := &upstreamServer{}
	note := func(s string) { u.mu.Lock(); u.subs = append(u.subs, s); u.mu.Unlock() }
	u.srv = mcp.NewServer(&mcp.Implementation{Name: "notion", Version: "1"}, &mcp.ServerOptions{
		CompletionHandler: func(_ context.Context, req *mcp.CompleteRequest) (*mcp.CompleteResult, error) {
			ref := req.Params.Ref
			return &mcp.CompleteResult{Completion: mcp.CompletionResultDetails{Values: []string{ref.Type + " " + ref.Name + ref.URI + " " + req.Params.Argument.Value}}}, nil
		},
		SubscribeHandler: func(_ context.Context, req *mcp.SubscribeRequest) error {
			if u.refuseSubs.Load() {
				return &jsonrpc.Error{Code: -32002, Message: "resource not found"}
			}
			note("+" + req.Params.URI)
			return nil
		},
		UnsubscribeHandler: func(_ context.Context, req *mcp.UnsubscribeRequest) error { note("-" + req.Params.URI); return nil },
	})
	schema := json.RawMessage(`{"type":"object","properties":{"workspace_id":{"type":"string"},"limit":{"type":"integer"}}}`)
	u.srv.AddTool(&mcp.Tool{Name: "get_pages", InputSchema: schema}, func(_ context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		u.mu.Lock()
		u.args = append(u.args, string(req.Params.Arguments))
		u.mu.Unlock()
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "3 pages"}}}, nil
	})
	u.srv.AddTool(&mcp.Tool{Name: "fail", InputSchema: json.RawMessage(`{"type":"object"}`)}, func(context.Context, *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		return nil, &jsonrpc.Error{Code: -32000, Message: "workspace is locked"}
	})
	u.srv.AddTool(&mcp.Tool{Name: "refuse", InputSchema: json.RawMessage(`{"type":"object"}`)}, func(context.Context, *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		return &mcp.CallToolResult{IsError: true, Content: []mcp.Content{&mcp.TextContent{Text: "page is archived"}}}, nil
	})
	u.srv.AddTool(&mcp.Tool{Name: "delete_page", InputSchema: json.RawMessage(`{"type":"object"}`)}, func(_ context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		u.mu.Lock()
		u.deleted = append(u.deleted, string(req.Params.Arguments))
		u.mu.Unlock()
		res := &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "deleted"}}}
		if strings.Contains(string(req.Params.Arguments), "linked") {
			// The page deleted had a link to another.
			res.Content = append(res.Content, &mcp.ResourceLink{URI: "notion://ws_abc123/p1", Name: "p1"})
		}
		return res, nil
	})
	u.srv.AddTool(&mcp.Tool{Name: "ask", InputSchema: json.RawMessage(`{"type":"object"}`)}, func(ctx context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		// What it asks of the agent ends with the test (stop) too, so that
		// the server can close when no answer, nor the call's
		// cancellation, reached it.
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go func() {
			select {
			case <-u.stop:
				cancel()
			case <-ctx.Done():
			}
		}()
		res, err := req.Session.CreateMessage(ctx, &mcp.CreateMessageParams{MaxTokens: 10,
			Messages: []*mcp.SamplingMessage{{Role: "user", Content: &mcp.TextContent{Text: "what now?"}}}})
		if err != nil {
			return nil, err
		}
		el, err := req.Session.Elicit(ctx, &mcp.ElicitParams{Message: "your name?",
			RequestedSchema: json.RawMessage(`{"type":"object","properties":{"name":{"type":"string"}}}`)})
		if err != nil {
			return nil, err
		}
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "agent said: " + res.Content.(*mcp.TextContent).Text + "; name " + fmt.Sprint(el.Content["name"])}}}, nil
	})
	u.srv.AddTool(&mcp.Tool{Name: "roots", InputSchema: json.RawMessage(`{"type":"object"}`)}, func(ctx context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		offered := req.Session.InitializeParams().Capabilities.RootsV2 != nil
		// Asked even when not offered, as a server that does not check might.
		res, err := req.Session.ListRoots(ctx, nil)
		if err != nil {
			return nil, err
		}
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: fmt.Sprintf("roots offered: %v; listed: %d", offered, len(res.Roots))}}}, nil
	})
	u.srv.AddTool(&mcp.Tool{Name: "offered", InputSchema: json.RawMessage(`{"type":"object"}`)}, func(ctx context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		c := req.Session.InitializeParams().Capabilities
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: fmt.Sprintf("sampling %v, tools %v; elicitation %v; roots %v",
			c.Sampling != nil, c.Sampling != nil && c.Sampling.Tools != nil, c.Elicitation != nil, c.RootsV2 != nil)}}}, nil
	})
	u.srv.AddTool(&mcp.Tool{Name: "sample_with_tools", InputSchema: json.RawMessage(`{"type":"object"}`)}, func(ctx context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		res, err := req.Session.CreateMessageWithTools(ctx, &mcp.CreateMessageWithToolsParams{MaxTokens: 10,
			Messages: []*mcp.SamplingMessageV2{{Role: "user", Content: []mcp.Content{&mcp.TextContent{Text: "look"}, &mcp.TextContent{Text: "up"}}}},
			Tools:    []*mcp.Tool{{Name: "lookup", InputSchema: json.RawMessage(`{"type":"object"}`)}}})
		if err != nil {
			return nil, err
		}
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "agent said: " + res.Content[0].(*mcp.TextContent).Text}}}, nil
	})
	u.srv.AddTool(&mcp.Tool{Name: "slow", InputSchema: json.RawMessage(`{"type":"object"}`)}, func(ctx context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		for i := range 2 {
			req.Session.NotifyProgress(ctx, &mcp.ProgressNotificationParams{ProgressToken: req.Params.GetProgressToken(), Progress: float64(i + 1), Total: 2})
		}
		req.Session.Log(ctx, &mcp.LoggingMessageParams{Level: "info", Data: "halfway"})
		req.Session.Log(ctx, &mcp.LoggingMessageParams{Level: "debug", Data: "too fine"})
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "done"}}}, nil
	})
	u.srv.AddTool(&mcp.Tool{Name: "big", InputSchema: json.RawMessage(`{"type":"object"}`)}, func(context.Context, *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: strings.Repeat("x", bigResult)}}}, nil
	})
	u.started, u.cancelled, u.stop = make(chan struct{}, 1), make(chan struct{}, 1), make(chan struct{})
	u.srv.AddTool(&mcp.Tool{Name: "wait", InputSchema: json.RawMessage(`{"type":"object"}`)}, func(ctx context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		u.started <- struct{}{}
		select {
		case <-ctx.Done():
			u.cancelled <- struct{}{}
			return nil, ctx.Err()
		case <-u.stop:
			return nil, errors.New("the test is over")
		}
	})
	u.srv.AddPrompt(&mcp.Prompt{Name: "summarize", Arguments: []*mcp.PromptArgument{{Name: "page"}}}, func(_ context.Context, req *mcp.GetPromptRequest) (*mcp.GetPromptResult, error) {
		return &mcp.GetPromptResult{Messages: []*mcp.PromptMessage{{Role: "user", Content: &mcp.TextContent{Text: "summarize " + req.Params.Arguments["page"]}}}}, nil
	})
	// links links to a page and embeds another, as cite does; its
	// structured content is its own data, which names a page too.
	u.srv.AddTool(&mcp.Tool{Name: "links", InputSchema: json.RawMessage(`{"type":"object"}`)}, func(context.Context, *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		return &mcp.CallToolResult{Content: []mcp.Content{
			&mcp.ResourceLink{URI: "notion://ws_abc123/p1", Name: "p1"},
			&mcp.EmbeddedResource{Resource: &mcp.ResourceContents{URI: "notion://ws_abc123/unlisted", Text: "not listed"}},
		}, StructuredContent: map[string]any{"uri": "notion://ws_abc123/p1"}}, nil
	})
	// sign_in asks the agent to visit a URL, if it was offered URL-mode
	// elicitation, and says the elicitation is complete whether or not.
	u.srv.AddTool(&mcp.Tool{Name: "sign_in", InputSchema: json.RawMessage(`{"type":"object"}`)}, func(ctx context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		action := "not asked"
		if c := req.Session.InitializeParams().Capabilities; c.Elicitation != nil && c.Elicitation.URL != nil {
			res, err := req.Session.Elicit(ctx, &mcp.ElicitParams{Mode: "url", Message: "sign in", URL: "https://example.com/sign-in", ElicitationID: "e-1"})
			if err != nil {
				return nil, err
			}
			action = res.Action
		}
		if err := req.Session.NotifyElicitationComplete(ctx, &mcp.ElicitationCompleteParams{ElicitationID: "e-1"}); err != nil {
			return nil, err
		}
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: action}}}, nil
	})
	u.srv.AddPrompt(&mcp.Prompt{Name: "cite"}, func(context.Context, *mcp.GetPromptRequest) (*mcp.GetPromptResult, error) {
		return &mcp.GetPromptResult{Messages: []*mcp.PromptMessage{
			{Role: "user", Content: &mcp.ResourceLink{URI: "notion://ws_abc123/p1", Name: "p1"}},
			{Role: "user", Content: &mcp.EmbeddedResource{Resource: &mcp.ResourceContents{URI: "notion://ws_abc123/unlisted", Text: "not listed"}}},
		}}, nil
	})
	// A page the server serves but does not list, as it may serve those
	// it links to.
	u.srv.AddReceivingMiddleware(func(next mcp.MethodHandler) mcp.MethodHandler {
		return func(ctx context.Context, method string, req mcp.Request) (mcp.Result, error) {
			if r, ok := req.(*mcp.ReadResourceRequest); ok && r.Params.URI == "notion://ws_abc123/unlisted" {
				return &mcp.ReadResourceResult{Contents: []*mcp.ResourceContents{{URI: r.Params.URI, Text: "not listed"}}}, nil
			}
			return next(ctx, method, req)
		}
	})
	u.srv.AddPrompt(&mcp.Prompt{Name: "secret_prompt"}, func(context.Context, *mcp.GetPromptRequest) (*mcp.GetPromptResult, error) {
		return &mcp.GetPromptResult{}, nil
	})
	for _, uri := range []string{"notion://ws_abc123/p1", "notion://ws_other/p2"} {
		u.srv.AddResource(&mcp.Resource{URI: uri, Name: uri, MIMEType: "text/plain"}, func(_ context.Context, req *mcp.ReadResourceRequest) (*mcp.ReadResourceResult, error) {
			return &mcp.ReadResourceResult{Contents: []*mcp.ResourceContents{{URI: req.Params.URI, MIMEType: "text/plain", Text: "page " + req.Params.URI}}}, nil
		})
	}
	u.srv.AddResourceTemplate(&mcp.ResourceTemplate{URITemplate: "notion://ws_abc123/drafts/{id}", Name: "draft"},
		func(_ context.Context, req *mcp.ReadResourceRequest) (*mcp.ReadResourceResult, error) {
			return &mcp.ReadResourceResult{Contents: []*mcp.ResourceContents{{URI: req.Params.URI, Text: "draft at " + req.Params.URI}}}, nil
		})
	u.srv.AddResourceTemplate(&mcp.ResourceTemplate{URITemplate: "notion://ws_other/drafts/{id}", Name: "other-draft"},
		func(context.Context, *mcp.ReadResourceRequest) (*mcp.ReadResourceResult, error) {
			return &mcp.ReadResourceResult{}, nil
		})
	u.srv.AddTool(&mcp.Tool{Name: "drop_database", InputSchema: json.RawMessage(`{"type":"object"}`)}, func(context.Context, *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "dropped"}}}, nil
	})
	return u
}

// transport connects a new in-memory session to the upstream server.
func (u *upstreamServer) transport(ctx context.Context) (mcp.Transport, error) {
	client, server := mcp.NewInMemoryTransports()
	if _, err := u.srv.Connect(ctx, server, nil); err != nil {
		return nil, err
	}
	return client, nil
}

// serveHTTP serves the upstream over Streamable HTTP on loopback, keeping
// the body of every POST it receives, and returns transports to it.
func (u *upstreamServer) serveHTTP(t *testing.T) func(context.Context) (mcp.Transport, error) {
	u.restart()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			body, _ := io.ReadAll(r.Body)
			u.mu.Lock()
			u.posts = append(u.posts, string(body))
			u.mu.Unlock()
			if h := u.callsTo.Load(); h != nil && bytes.Contains(body, []byte(`"method":"tools/call"`)) {
				(*h)(w, r)
				return
			}
			if hold := u.holding.Load(); hold != nil && (*hold)(body) {
				<-u.stop
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
		}
		if h := u.resumesTo.Load(); h != nil && r.Method == http.MethodGet && r.Header.Get("Last-Event-ID") != "" {
			(*h)(w, r)
			return
		}
		u.mu.Lock()
		h, hold := u.handler, u.deletes
		u.mu.Unlock()
		if r.Method == http.MethodDelete && hold != nil {
			u.deleting <- struct{}{}
			<-hold
		}
		h.ServeHTTP(w, r)
	}))
	srv.Config.ConnState = func(_ net.Conn, state http.ConnState) {
		if state == http.StateNew {
			u.conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	u.http = srv
	return func(context.Context) (mcp.Transport, error) {
		client := &http.Client{Transport: countCloses{base: http.DefaultTransport, u: u}}
		return &mcp.StreamableClientTransport{Endpoint: srv.URL, HTTPClient: client}, nil
	}
}

// countCloses counts the streams of callStream's answers their readers
// close, and those read to their end first, in u.
type countCloses struct {
	base http.RoundTripper
	u    *upstreamServer
}

func (c countCloses) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := c.base.RoundTrip(r)
	if err == nil && resp.Header.Get(callStreamHeader) != "" {
		resp.Body = &countedBody{ReadCloser: resp.Body, u: c.u}
	}
	return resp, err
}

type countedBody struct {
	io.ReadCloser
	u    *upstreamServer
	eof  atomic.Bool
	once sync.Once
}

func (b *countedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.eof.Store(true)
	}
	return n, err
}

func (b *countedBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(func() {
		if b.eof.Load() {
			b.u.drained.Add(1)
		}
		b.u.closed.Add(1)
	})
	return err
}

// holdDeletes makes the HTTP upstream hold every request to end a session
// until the returned channel is closed.
func (u *upstreamServer) holdDeletes() chan struct{} {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.deletes, u.deleting = make(chan struct{}), make(chan struct{}, 16)
	return u.deletes
}

// restart gives the HTTP upstream a new handler, which knows none of the
// sessions of the old one, as after a restart of the server.
func (u *upstreamServer) restart() {
	u.mu.Lock()
	defer u.mu.Unlock()
	opts := &mcp.StreamableHTTPOptions{JSONResponse: u.jsonAnswers, Stateless: u.stateless}
	if u.resumable {
		opts.EventStore = mcp.NewMemoryEventStore(nil)
	}
	u.handler = mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return u.srv }, opts)
}

// awaitCancelled waits for the upstream to see a call cancelled, and
// fails the test with why if it does not in time.
func (u *upstreamServer) awaitCancelled(t *testing.T, why string) {
	t.Helper()
	select {
	case <-u.cancelled:
	case <-time.After(10 * time.Second):
		t.Fatal(why)
	}
}

// lastPost is the body of the last POST the upstream received.
func (u *upstreamServer) lastPost() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.posts) == 0 {
		return ""
	}
	return u.posts[len(u.posts)-1]
}

type fixed struct{ set *policy.Set }

func (f fixed) Current() *policy.Set { return f.set }

// livePolicy is a policy a test may change, as a reload does.
type livePolicy struct{ set atomic.Pointer[policy.Set] }

func (l *livePolicy) Current() *policy.Set { return l.set.Load() }

type gateway struct {
	policy    *livePolicy
	tokens    tokens.Store
	broker    *Broker
	signer    *authz.Signer
	audit     *audittest.Recorder
	url       string
	brokerURL string
	token     string
	up        *upstreamServer
}

func newGateway(t *testing.T) *gateway { return newGatewayOver(t, false) }

// newGatewayOver builds the gateway with its upstream in memory or, with
// overHTTP, served over Streamable HTTP on loopback, where calls after the
// first take the direct path.
func newGatewayOver(t *testing.T, overHTTP bool, tweak ...func(*Options)) *gateway {
	t.Helper()
	return newGatewayTimed(t, overHTTP, 5*time.Second, nil, tweak...)
}

// newGatewayTimed is newGatewayOver with the upstream's call timeout, and
// more upstreams beside it.
func newGatewayTimed(t *testing.T, overHTTP bool, callTimeout time.Duration, more []Upstream, tweak ...func(*Options)) *gateway {
	t.Helper()
	ctx := context.Background()
	set, err := policy.Compile([]policy.File{{Name: "reader.yaml", Data: []byte(testRole)}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	pol := &livePolicy{}
	pol.set.Store(set)
	store := tokens.NewMemoryStore()
	token, _, err := tokens.Issue(ctx, store, "bot-1", "reader", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	signer, _ := authz.NewSigner([]byte(strings.Repeat("k", 32)), nil)
	az, err := authz.New(authz.Deps{
		Tokens: tokens.NewAuthenticator(store, nil), Policies: pol, Limiter: ratelimit.NewMemory(nil),
		Audit: discard{}, Redactor: audit.NewRedactor([]byte("r")), Signer: signer,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	up := newUpstream()
	transport := up.transport
	if overHTTP {
		transport = up.serveHTTP(t)
	}
	rec := &audittest.Recorder{}
	opts := &Options{Audit: rec, Redactor: audit.NewRedactor([]byte("r")), Sessionless: true}
	for _, f := range tweak {
		f(opts)
	}
	b, err := New(append([]Upstream{{Name: "notion", Transport: transport, CallTimeout: callTimeout}}, more...), signer, pol, opts)
	if err != nil {
		t.Fatal(err)
	}
	b.Start(ctx)
	t.Cleanup(b.Close)
	srv := httptest.NewServer(front.New(az, b, nil))
	t.Cleanup(srv.Close)
	direct := httptest.NewServer(b)
	t.Cleanup(direct.Close)
	t.Cleanup(func() { close(up.stop) })
	return &gateway{url: srv.URL + "/mcp", brokerURL: direct.URL + "/mcp", token: token, up: up, audit: rec, signer: signer, broker: b, tokens: store, policy: pol}
}

type discard struct{}

func (discard) Log(*audit.Record) error      { return nil }
func (discard) LogAll([]*audit.Record) error { return nil }

// bearer adds the agent's token to every request of an MCP client.
type bearer struct {
	token string
	base  http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.base.RoundTrip(r)
}

// sessionVersion is the newest protocol version with sessions, which the
// agents of tests of what a session does speak; the go-sdk's client asks
// for a later one, without sessions, unless told (see stateless_test.go).
const sessionVersion = "2025-11-25"

// connect connects an agent with a session.
func (g *gateway) connect(t *testing.T, opts *mcp.ClientOptions) *mcp.ClientSession {
	t.Helper()
	transport := &mcp.StreamableClientTransport{Endpoint: g.url, HTTPClient: &http.Client{Transport: bearer{g.token, http.DefaultTransport}}}
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "agent", Version: "1"}, opts).Connect(context.Background(), transport,
		&mcp.ClientSessionOptions{ProtocolVersion: sessionVersion})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close() })
	return cs
}

func toolNames(t *testing.T, cs *mcp.ClientSession) []string {
	t.Helper()
	res, err := cs.ListTools(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tool := range res.Tools {
		names = append(names, tool.Name)
	}
	slices.Sort(names)
	return names
}

func TestToolsListShowsOnlyGrantedTools(t *testing.T) {
	g := newGateway(t)
	cs := g.connect(t, nil)
	// drop_database is not granted; late_tool is granted but the upstream
	// does not have it (yet).
	if diff := cmp.Diff([]string{"notion__ask", "notion__big", "notion__delete_page", "notion__fail", "notion__get_pages", "notion__links", "notion__offered", "notion__refuse", "notion__roots", "notion__sample_with_tools", "notion__sign_in", "notion__slow", "notion__wait"}, toolNames(t, cs)); diff != "" {
		t.Errorf("tools (-want +got):\n%s", diff)
	}
}

func TestAllowedCallReachesUpstreamWithExactArguments(t *testing.T) {
	g := newGateway(t)
	cs := g.connect(t, nil)
	res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "notion__get_pages",
		Arguments: json.RawMessage(`{"workspace_id":"ws_abc123","limit":7}`)})
	if err != nil {
		t.Fatal(err)
	}
	if res.IsError || res.Content[0].(*mcp.TextContent).Text != "3 pages" {
		t.Errorf("result = %+v", res)
	}
	g.up.mu.Lock()
	defer g.up.mu.Unlock()
	if diff := cmp.Diff([]string{`{"workspace_id":"ws_abc123","limit":7}`}, g.up.args); diff != "" {
		t.Errorf("upstream arguments (-want +got):\n%s", diff)
	}
	recs := g.audit.All()
	if len(recs) != 1 {
		t.Fatalf("broker records: %+v", recs)
	}
	if rec := recs[0]; rec.Code != CodeExecuted || rec.UpstreamStatus != "ok" || rec.DecisionID == "" ||
		rec.Agent != "bot-1" || rec.Server != "notion" || rec.Tool != "get_pages" {
		t.Errorf("execution record = %+v", rec)
	}
}

func TestRefusals(t *testing.T) {
	g := newGateway(t)
	cs := g.connect(t, nil)
	tests := []struct {
		name, tool, args string
		want             string
	}{
		{"not granted", "notion__drop_database", `{}`, `tool "notion__drop_database" is not granted to role "reader"`},
		{"unknown argument", "notion__get_pages", `{"workspace_id":"ws_abc123","admin":true}`, `argument "admin" is not allowed`},
		{"constraint", "notion__get_pages", `{"workspace_id":"ws_other"}`, `argument "workspace_id" is not the allowed value`},
		{"traversal", "../notion__get_pages", `{}`, `..`},
		{"upstream error names the server", "notion__fail", `{}`, `upstream "notion": workspace is locked`},
		{"approval needed", "notion__delete_page", `{"page_id":"p1"}`, `needs human approval`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: tt.tool, Arguments: json.RawMessage(tt.args)})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want one containing %q", err, tt.want)
			}
		})
	}
	g.up.mu.Lock()
	defer g.up.mu.Unlock()
	if len(g.up.args) != 0 {
		t.Errorf("refused calls reached the upstream: %v", g.up.args)
	}
	if diff := cmp.Diff([]string{CodeUpstreamError, CodeApprovalUnavailable}, g.audit.Codes()); diff != "" {
		t.Errorf("broker audit codes (-want +got):\n%s", diff)
	}
}

// postMCP sends body to url as an MCP client over HTTP would, with header
// added, and returns the response's status and body.
func postMCP(t *testing.T, url string, header map[string]string, body string) (int, string) {
	t.Helper()
	return sendMCP(t, "POST", url, header, body)
}

// sendMCP is postMCP with another method; a GET or DELETE has no body.
func sendMCP(t *testing.T, method, url string, header map[string]string, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	for k, v := range header {
		req.Header.Set(k, v)
	}
	// A stream that should not have been served would be read forever:
	// the timeout fails the test instead.
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(data)
}

// A request that needs a session and names none is refused with 400, as
// the protocol asks, and a JSON-RPC error, and recorded: the SDK would
// have begun a session for it and refused it with code 0.
func TestRequestWithoutASession(t *testing.T) {
	g := newGatewayOver(t, true)
	header := map[string]string{"Authorization": "Bearer " + g.token, "Mcp-Protocol-Version": rawVersion}
	const want = `"error":{"code":-32600,"message":"this request needs the Mcp-Session-Id header of a session; begin one with initialize"}`
	for body, id := range map[string]string{
		`{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"notion__get_pages","arguments":{"workspace_id":"ws_abc123"}}}`: "2",
		`{"jsonrpc":"2.0","id":"x","method":"tools/list"}`:       `"x"`,
		`{"jsonrpc":"2.0","method":"notifications/initialized"}`: "null",
	} {
		status, resp := sendMCP(t, "POST", g.url, header, body)
		if status != http.StatusBadRequest || !strings.Contains(resp, `"id":`+id) || !strings.Contains(resp, want) {
			t.Errorf("%s: %d %s; want 400, id %s and %s", body, status, resp, id, want)
		}
	}
	if n := strings.Count(strings.Join(g.audit.Codes(), " "), CodeSessionRequired); n != 3 {
		t.Errorf("%d refusals recorded as %s, want 3: %v", n, CodeSessionRequired, g.audit.Codes())
	}
	// A session begun, its requests are served.
	a := newRawAgent(t, g)
	if got := a.post(`{"jsonrpc":"2.0","id":3,"method":"tools/list"}`); len(got) != 1 || !strings.Contains(got[0], "notion__get_pages") {
		t.Errorf("tools/list in a session: %q", got)
	}
}

// An agent cannot use, nor end, another agent's session, whose id it may
// have learnt: the gateway answers as for a session it does not know.
func TestAnotherAgentsSessionIsNotFound(t *testing.T) {
	g := newGatewayOver(t, true)
	owner := newRawAgent(t, g)
	owner.post(`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"notion__get_pages","arguments":{"workspace_id":"ws_abc123"}}}`)
	other, _, err := tokens.Issue(context.Background(), g.tokens, "bot-2", "reader", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	g.up.mu.Lock()
	calls := len(g.up.args)
	g.up.mu.Unlock()
	header := map[string]string{"Authorization": "Bearer " + other, "Mcp-Protocol-Version": rawVersion, "Mcp-Session-Id": owner.sid}
	for method, body := range map[string]string{
		"POST":   `{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"notion__get_pages","arguments":{"workspace_id":"ws_abc123"}}}`,
		"GET":    "",
		"DELETE": "",
	} {
		if status, _ := sendMCP(t, method, g.url, header, body); status != http.StatusNotFound {
			t.Errorf("%s in another agent's session: status %d, want 404", method, status)
		}
	}
	// Each attempt is recorded, under the agent that made it.
	var attempts int
	for _, rec := range g.audit.All() {
		if rec.Code == CodeSessionNotOwned && rec.Agent == "bot-2" && rec.Verdict == "deny" {
			attempts++
		}
	}
	if attempts != 3 {
		t.Errorf("%d attempts recorded as %s, want 3: %v", attempts, CodeSessionNotOwned, g.audit.Codes())
	}
	g.up.mu.Lock()
	n := len(g.up.args)
	g.up.mu.Unlock()
	if n != calls {
		t.Errorf("the other agent's call reached the upstream")
	}
	// The session is still its owner's.
	if got := owner.post(`{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"notion__get_pages","arguments":{"workspace_id":"ws_abc123"}}}`); len(got) != 1 || !strings.Contains(got[0], "3 pages") {
		t.Errorf("the owner's call after: %q", got)
	}
}

// The broker reads no more of a body than it may decide on, whoever
// sends it, and records the refusal.
func TestBrokerRefusesAnOversizedBody(t *testing.T) {
	g := newGatewayOver(t, false, func(o *Options) { o.MaxBodyBytes = 1 << 10 })
	body := `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"notion__get_pages","arguments":{"workspace_id":"` + strings.Repeat("x", 2<<10) + `"}}}`
	status, answer := postMCP(t, g.brokerURL, nil, body)
	if status != http.StatusRequestEntityTooLarge || !strings.Contains(answer, "request body too large") {
		t.Errorf("oversized body: %d %s, want 413", status, answer)
	}
	if diff := cmp.Diff([]string{string(authz.CodeBodyTooLarge)}, g.audit.Codes()); diff != "" {
		t.Errorf("broker audit codes (-want +got):\n%s", diff)
	}
}

func TestBrokerRefusesRequestsWithoutDecision(t *testing.T) {
	g := newGateway(t)
	body := `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"notion__drop_database","arguments":{}}}`
	for name, hdrs := range map[string]map[string]string{
		"no decision": {},
		"forged":      {"X-Amg-Decision": "djE.forged", "X-Amg-Role": "reader", "X-Amg-Agent": "bot-1"},
	} {
		t.Run(name, func(t *testing.T) {
			if status, _ := postMCP(t, g.brokerURL, hdrs, body); status != http.StatusForbidden {
				t.Errorf("status %d, want 403", status)
			}
		})
	}
	if diff := cmp.Diff([]string{CodeDecisionInvalid, CodeDecisionInvalid}, g.audit.Codes()); diff != "" {
		t.Errorf("broker audit codes (-want +got):\n%s", diff)
	}
}

func TestToolListChangedIsRelayed(t *testing.T) {
	g := newGateway(t)
	changed := make(chan struct{}, 4)
	cs := g.connect(t, &mcp.ClientOptions{ToolListChangedHandler: func(context.Context, *mcp.ToolListChangedRequest) {
		changed <- struct{}{}
	}})
	toolNames(t, cs)
	g.up.srv.AddTool(&mcp.Tool{Name: "late_tool", InputSchema: json.RawMessage(`{"type":"object"}`)}, func(context.Context, *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		return &mcp.CallToolResult{}, nil
	})
	select {
	case <-changed:
	case <-time.After(10 * time.Second):
		t.Fatal("no tools/list_changed reached the agent")
	}
	if !slices.Contains(toolNames(t, cs), "notion__late_tool") {
		t.Error("the new granted tool is not listed")
	}
}

// A tool whose grant a policy reload withdraws leaves the list of the
// role's connected agents, who are told their list changed.
func TestWithdrawnGrantLeavesTheList(t *testing.T) {
	g := newGateway(t)
	changed := make(chan struct{}, 4)
	cs := g.connect(t, &mcp.ClientOptions{ToolListChangedHandler: func(context.Context, *mcp.ToolListChangedRequest) {
		changed <- struct{}{}
	}})
	if !slices.Contains(toolNames(t, cs), "notion__fail") {
		t.Fatal("notion__fail is not listed before its grant is withdrawn")
	}
	set, err := policy.Compile([]policy.File{{Name: "reader.yaml", Data: []byte(strings.Replace(testRole, "      - name: fail\n", "", 1))}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	g.policy.set.Store(set)
	g.broker.Sync()
	select {
	case <-changed:
	case <-time.After(10 * time.Second):
		t.Fatal("no tools/list_changed reached the agent")
	}
	if slices.Contains(toolNames(t, cs), "notion__fail") {
		t.Error("notion__fail is still listed after its grant was withdrawn")
	}
}

func TestAnnotationsComeFromTheUpstream(t *testing.T) {
	up := newUpstream()
	no := false
	up.srv.AddTool(&mcp.Tool{Name: "archive", InputSchema: json.RawMessage(`{"type":"object"}`),
		Annotations: &mcp.ToolAnnotations{ReadOnlyHint: true, DestructiveHint: &no}},
		func(context.Context, *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			return &mcp.CallToolResult{}, nil
		})
	signer, _ := authz.NewSigner([]byte(strings.Repeat("k", 32)), nil)
	b, err := New([]Upstream{{Name: "notion", Transport: up.transport}}, signer, fixed{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	b.Start(context.Background())
	defer b.Close()
	a := b.Annotations("notion", "archive")
	if a == nil || !*a.ReadOnly || *a.Destructive || a.Effective(policy.DestructiveHint) {
		t.Errorf("annotations of archive = %+v", a)
	}
	if b.Annotations("notion", "get_pages") != nil || b.Annotations("nope", "archive") != nil {
		t.Error("a tool without annotations, or an unknown server, must give nil")
	}

	// The same, as the live catalogue the console and replay read.
	if names := b.Names(); !slices.Equal(names, []string{"notion"}) {
		t.Errorf("Names() = %v", names)
	}
	tools, ok := b.Tools("notion")
	i := slices.IndexFunc(tools, func(t policy.Tool) bool { return t.Name == "archive" })
	if !ok || i < 0 || tools[i].Annotations.Effective(policy.DestructiveHint) || !tools[i].Annotations.Effective(policy.ReadOnlyHint) ||
		string(tools[i].InputSchema) != `{"type":"object"}` {
		t.Errorf("Tools(notion) = %+v, %v; want archive, read-only, with its schema", tools, ok)
	}
	if _, ok := b.Tools("nope"); ok {
		t.Error("Tools of an unknown server must not be ok")
	}
	b.Close()
	if _, ok := b.Tools("notion"); ok {
		t.Error("Tools of a server whose catalogue session is closed must not be ok")
	}
}

// An upstream's sampling and elicitation requests reach the agent, and its
// answers come back to the upstream.
func TestServerToClientRequestsAreRelayed(t *testing.T) {
	bothPaths(t, func(t *testing.T, g *gateway) {
		cs := g.connect(t, &mcp.ClientOptions{
			CreateMessageHandler: func(context.Context, *mcp.CreateMessageRequest) (*mcp.CreateMessageResult, error) {
				return &mcp.CreateMessageResult{Model: "agent-model", Role: "assistant", Content: &mcp.TextContent{Text: "ship it"}}, nil
			},
			ElicitationHandler: func(context.Context, *mcp.ElicitRequest) (*mcp.ElicitResult, error) {
				return &mcp.ElicitResult{Action: "accept", Content: map[string]any{"name": "Ada"}}, nil
			},
		})
		g.warm(t, cs)
		res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "notion__ask", Arguments: json.RawMessage(`{}`)})
		if err != nil || res.Content[0].(*mcp.TextContent).Text != "agent said: ship it; name Ada" {
			t.Fatalf("sampling and elicitation through the gateway: %v %+v", err, res)
		}
		g.checkPath(t, "notion__ask")
	})
}

// An upstream's URL-mode elicitation reaches an agent that declared it,
// and so does the upstream's word that it is complete.
func TestURLElicitationCompletes(t *testing.T) {
	bothPaths(t, func(t *testing.T, g *gateway) {
		completed := make(chan string, 1)
		cs := g.connect(t, &mcp.ClientOptions{
			Capabilities: &mcp.ClientCapabilities{Elicitation: &mcp.ElicitationCapabilities{URL: &mcp.URLElicitationCapabilities{}}},
			ElicitationHandler: func(_ context.Context, req *mcp.ElicitRequest) (*mcp.ElicitResult, error) {
				return &mcp.ElicitResult{Action: "accept"}, nil
			},
			ElicitationCompleteHandler: func(_ context.Context, req *mcp.ElicitationCompleteNotificationRequest) {
				completed <- req.Params.ElicitationID
			},
		})
		g.warm(t, cs)
		res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "notion__sign_in", Arguments: json.RawMessage(`{}`)})
		if err != nil || res.Content[0].(*mcp.TextContent).Text != "accept" {
			t.Fatalf("URL-mode elicitation through the gateway: %v %+v", err, res)
		}
		g.checkPath(t, "notion__sign_in")
		select {
		case id := <-completed:
			if id != "e-1" {
				t.Errorf("the agent was told elicitation %q is complete, want e-1", id)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the upstream's notifications/elicitation/complete never reached the agent")
		}
	})
}

// An agent that did not declare URL-mode elicitation, and so cannot have
// been asked one, is not told one is complete.
func TestElicitationCompleteOnlyToAgentsThatDeclaredIt(t *testing.T) {
	bothPaths(t, func(t *testing.T, g *gateway) {
		a := &rawAgent{t: t, url: g.url, token: g.token}
		a.post(`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"` + rawVersion + `","capabilities":{"elicitation":{}},"clientInfo":{"name":"raw","version":"1"}}}`)
		a.post(`{"jsonrpc":"2.0","method":"notifications/initialized"}`)
		warmRaw(a)
		got := a.post(`{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"notion__sign_in","arguments":{}}}`)
		if len(got) != 1 || !strings.Contains(got[0], `"text":"not asked"`) {
			t.Errorf("the call's stream = %q, want its result alone", got)
		}
		g.checkPath(t, "notion__sign_in")
	})
}

// The resources a tool result or a prompt links to or embeds are named as
// agents read them, so that an agent reads them through the gateway as it
// would from the upstream; a tool's structured content is its own data,
// and stays as it was.
func TestLinkedResourcesAreReadable(t *testing.T) {
	bothPaths(t, func(t *testing.T, g *gateway) {
		cs := g.connect(t, nil)
		g.warm(t, cs)
		ctx := context.Background()
		res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "notion__links", Arguments: json.RawMessage(`{}`)})
		if err != nil || len(res.Content) != 2 {
			t.Fatalf("the links tool: %v %+v", err, res)
		}
		g.checkPath(t, "notion__links")
		if diff := cmp.Diff(map[string]any{"uri": "notion://ws_abc123/p1"}, res.StructuredContent); diff != "" {
			t.Errorf("structured content (-want +got):\n%s", diff)
		}
		prompt, err := cs.GetPrompt(ctx, &mcp.GetPromptParams{Name: "notion__cite"})
		if err != nil || len(prompt.Messages) != 2 {
			t.Fatalf("the cite prompt: %v %+v", err, prompt)
		}
		uris := []string{res.Content[0].(*mcp.ResourceLink).URI, res.Content[1].(*mcp.EmbeddedResource).Resource.URI,
			prompt.Messages[0].Content.(*mcp.ResourceLink).URI, prompt.Messages[1].Content.(*mcp.EmbeddedResource).Resource.URI}
		want := []string{"amg:notion:notion://ws_abc123/p1", "amg:notion:notion://ws_abc123/unlisted",
			"amg:notion:notion://ws_abc123/p1", "amg:notion:notion://ws_abc123/unlisted"}
		if diff := cmp.Diff(want, uris); diff != "" {
			t.Errorf("linked URIs (-want +got):\n%s", diff)
		}
		for _, uri := range uris {
			if _, err := cs.ReadResource(ctx, &mcp.ReadResourceParams{URI: uri}); err != nil {
				t.Errorf("the agent cannot read %q, which the upstream linked to: %v", uri, err)
			}
		}
	})
}

// Upstreams are offered no roots, and asked for them anyway get none:
// the agent's roots never reach them, nor their asking the agent.
func TestUpstreamsGetNoRoots(t *testing.T) {
	bothPaths(t, func(t *testing.T, g *gateway) {
		var asked atomic.Int32
		c := mcp.NewClient(&mcp.Implementation{Name: "agent", Version: "1"}, nil)
		c.AddRoots(&mcp.Root{URI: "file:///", Name: "everything"})
		c.AddReceivingMiddleware(func(next mcp.MethodHandler) mcp.MethodHandler {
			return func(ctx context.Context, method string, req mcp.Request) (mcp.Result, error) {
				if method == "roots/list" {
					asked.Add(1)
				}
				return next(ctx, method, req)
			}
		})
		transport := &mcp.StreamableClientTransport{Endpoint: g.url, HTTPClient: &http.Client{Transport: bearer{g.token, http.DefaultTransport}}}
		cs, err := c.Connect(context.Background(), transport, &mcp.ClientSessionOptions{ProtocolVersion: sessionVersion})
		if err != nil {
			t.Fatal(err)
		}
		defer cs.Close()
		g.warm(t, cs)
		res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "notion__roots", Arguments: json.RawMessage(`{}`)})
		if err != nil || res.IsError {
			t.Fatalf("the roots tool: %v %+v", err, res)
		}
		if got := res.Content[0].(*mcp.TextContent).Text; got != "roots offered: false; listed: 0" {
			t.Errorf("the upstream's view: %q", got)
		}
		g.checkPath(t, "notion__roots")
		if n := asked.Load(); n != 0 {
			t.Errorf("the agent was asked for its roots %d times", n)
		}
	})
}

// An upstream is offered sampling and elicitation as the agent declared
// them, so that it asks only what the agent can answer.
func TestUpstreamsAreOfferedWhatTheAgentDeclared(t *testing.T) {
	sample := func(_ context.Context, req *mcp.CreateMessageWithToolsRequest) (*mcp.CreateMessageWithToolsResult, error) {
		text := fmt.Sprintf("%d tools, %d content blocks", len(req.Params.Tools), len(req.Params.Messages[0].Content))
		return &mcp.CreateMessageWithToolsResult{Model: "m", Role: "assistant", Content: []mcp.Content{&mcp.TextContent{Text: text}}}, nil
	}
	elicit := func(context.Context, *mcp.ElicitRequest) (*mcp.ElicitResult, error) {
		return &mcp.ElicitResult{Action: "decline"}, nil
	}
	for _, tc := range []struct {
		name string
		opts *mcp.ClientOptions
		want string
	}{
		{"neither", nil, "sampling false, tools false; elicitation false; roots false"},
		{"both", &mcp.ClientOptions{CreateMessageWithToolsHandler: sample, ElicitationHandler: elicit},
			"sampling true, tools true; elicitation true; roots false"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bothPaths(t, func(t *testing.T, g *gateway) {
				cs := g.connect(t, tc.opts)
				g.warm(t, cs)
				res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "notion__offered", Arguments: json.RawMessage(`{}`)})
				if err != nil || res.IsError {
					t.Fatalf("the offered tool: %v %+v", err, res)
				}
				if got := res.Content[0].(*mcp.TextContent).Text; got != tc.want {
					t.Errorf("the upstream was offered %q, want %q", got, tc.want)
				}
				if tc.opts == nil {
					return
				}
				// A sampling request with tools and several content blocks
				// reaches the agent whole.
				res, err = cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "notion__sample_with_tools", Arguments: json.RawMessage(`{}`)})
				if err != nil || res.IsError {
					t.Fatalf("sampling with tools: %v %+v", err, res)
				}
				if got := res.Content[0].(*mcp.TextContent).Text; got != "agent said: 1 tools, 2 content blocks" {
					t.Errorf("sampling with tools: %q", got)
				}
			})
		})
	}
}

// bothPaths runs test against an upstream in memory, which the SDK path
// serves, and against one over HTTP, where calls after an agent session's
// first take the direct path.
func bothPaths(t *testing.T, test func(t *testing.T, g *gateway)) {
	for _, overHTTP := range []bool{false, true} {
		name := "sdk"
		if overHTTP {
			name = "direct"
		}
		t.Run(name, func(t *testing.T) { test(t, newGatewayOver(t, overHTTP)) })
	}
}

// warm makes an agent session's first call, which opens its upstream
// session, so that the next ones can take the direct path.
func (g *gateway) warm(t *testing.T, cs *mcp.ClientSession) {
	t.Helper()
	if _, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "notion__get_pages", Arguments: json.RawMessage(`{"workspace_id":"ws_abc123"}`)}); err != nil {
		t.Fatal(err)
	}
}

// checkPath checks, over HTTP, that the upstream got the last call of tool
// as the direct path sends it: under an id of the broker's.
func (g *gateway) checkPath(t *testing.T, tool string) {
	t.Helper()
	if g.up.http == nil {
		return
	}
	_, name, _ := strings.Cut(tool, "__")
	g.up.mu.Lock()
	defer g.up.mu.Unlock()
	for i := len(g.up.posts) - 1; i >= 0; i-- {
		if p := g.up.posts[i]; strings.Contains(p, `"method":"tools/call"`) && strings.Contains(p, `"name":"`+name+`"`) {
			if !strings.Contains(p, `"id":"amg-`) {
				t.Errorf("the call did not take the direct path: upstream got %s", p)
			}
			return
		}
	}
	t.Errorf("the upstream got no call of %s", name)
}

func TestPromptsAndResources(t *testing.T) {
	g := newGateway(t)
	cs := g.connect(t, nil)
	ctx := context.Background()
	prompts, err := cs.ListPrompts(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range prompts.Prompts {
		names = append(names, p.Name)
	}
	if diff := cmp.Diff([]string{"notion__cite", "notion__summarize"}, names); diff != "" {
		t.Errorf("prompts (-want +got):\n%s", diff)
	}
	got, err := cs.GetPrompt(ctx, &mcp.GetPromptParams{Name: "notion__summarize", Arguments: map[string]string{"page": "p1"}})
	if err != nil || got.Messages[0].Content.(*mcp.TextContent).Text != "summarize p1" {
		t.Errorf("prompts/get: %v %+v", err, got)
	}
	if _, err := cs.GetPrompt(ctx, &mcp.GetPromptParams{Name: "notion__secret_prompt"}); err == nil || !strings.Contains(err.Error(), "not granted") {
		t.Errorf("ungranted prompt: %v", err)
	}

	resources, err := cs.ListResources(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var uris []string
	for _, r := range resources.Resources {
		uris = append(uris, r.URI)
	}
	if diff := cmp.Diff([]string{"amg:notion:notion://ws_abc123/p1"}, uris); diff != "" {
		t.Errorf("resources (-want +got):\n%s", diff)
	}
	read, err := cs.ReadResource(ctx, &mcp.ReadResourceParams{URI: "amg:notion:notion://ws_abc123/p1"})
	if err != nil || len(read.Contents) != 1 || read.Contents[0].Text != "page notion://ws_abc123/p1" || read.Contents[0].URI != "amg:notion:notion://ws_abc123/p1" {
		t.Errorf("resources/read: %v %+v", err, read)
	}
	if _, err := cs.ReadResource(ctx, &mcp.ReadResourceParams{URI: "amg:notion:notion://ws_other/p2"}); err == nil || !strings.Contains(err.Error(), "not granted") {
		t.Errorf("ungranted resource: %v", err)
	}
}

// What the gateway lists, and the resources it reads, are the role's: a
// result is marked for the requesting client's cache alone, never for
// one an intermediary shares between clients of other roles.
func TestListsAreCacheableByTheAgentAlone(t *testing.T) {
	g := newGateway(t)
	cs := g.connect(t, nil)
	ctx := context.Background()
	tools, err := cs.ListTools(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	prompts, err := cs.ListPrompts(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	resources, err := cs.ListResources(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	templates, err := cs.ListResourceTemplates(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	read, err := cs.ReadResource(ctx, &mcp.ReadResourceParams{URI: "amg:notion:notion://ws_abc123/p1"})
	if err != nil {
		t.Fatal(err)
	}
	unlisted, err := cs.ReadResource(ctx, &mcp.ReadResourceParams{URI: "amg:notion:notion://ws_abc123/unlisted"})
	if err != nil {
		t.Fatal(err)
	}
	for what, scope := range map[string]string{
		"tools/list": tools.CacheScope, "prompts/list": prompts.CacheScope, "resources/list": resources.CacheScope,
		"resources/templates/list": templates.CacheScope, "resources/read": read.CacheScope,
		"resources/read of an unlisted resource": unlisted.CacheScope,
	} {
		if scope != "private" {
			t.Errorf("%s: cacheScope %q, want private", what, scope)
		}
	}
}

// Each identity header must agree with the decision on its own: the
// agent, the role and the decision id are checked one by one, so a
// request right in two and wrong in the third is still refused.
func TestBrokerRefusesIdentityHeadersThatDisagreeWithTheDecision(t *testing.T) {
	body := `{"jsonrpc":"2.0","id":1,"method":"tools/list"}`
	for _, tc := range []struct {
		name, agent, role, id string
		refused               bool
	}{
		{"all agree", "bot-1", "reader", "d1", false},
		{"wrong role", "bot-1", "admin", "d1", true},
		{"wrong agent", "bot-2", "reader", "d1", true},
		{"wrong decision id", "bot-1", "reader", "d2", true},
		{"no identity headers", "", "", "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newGateway(t)
			tok := g.signer.Sign(authz.Decision{ID: "d1", Agent: "bot-1", Role: "reader", Verdict: "allow", BodySHA256: sha256.Sum256([]byte(body)), Method: "POST"})
			code, answer := postMCP(t, g.brokerURL, map[string]string{authz.HeaderDecision: tok,
				authz.HeaderAgent: tc.agent, authz.HeaderRole: tc.role, authz.HeaderDecisionID: tc.id}, body)
			mismatch := slices.Contains(g.audit.Codes(), CodeIdentityMismatch)
			if !tc.refused {
				// The control: with every header right the request gets past
				// the check, so the refusals below are the check's alone.
				if mismatch || strings.Contains(answer, "identity headers") {
					t.Errorf("%d %s (audit codes %v); want the request past the identity check", code, answer, g.audit.Codes())
				}
				return
			}
			if code != http.StatusForbidden || !strings.Contains(answer, "identity headers do not match the decision") {
				t.Errorf("%d %s; want 403 saying the identity headers do not match", code, answer)
			}
			if diff := cmp.Diff([]string{CodeIdentityMismatch}, g.audit.Codes()); diff != "" {
				t.Errorf("broker audit codes (-want +got):\n%s", diff)
			}
		})
	}
}

// A decision is served once: the same token and body again, as someone who
// captured them between Envoy and the broker would send them, are refused
// and audited, and the call does not run again.
func TestDecisionIsServedOnce(t *testing.T) {
	g := newGateway(t)
	a := newRawAgent(t, g)
	body := `{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"notion__get_pages","arguments":{"workspace_id":"ws_abc123"}}}`
	h := map[string]string{authz.HeaderAgent: "bot-1", authz.HeaderRole: "reader", authz.HeaderDecisionID: "d-once",
		"Mcp-Session-Id": a.sid, "Mcp-Protocol-Version": rawVersion,
		authz.HeaderDecision: g.signer.Sign(authz.Decision{ID: "d-once", Agent: "bot-1", Role: "reader", Verdict: "allow",
			BodySHA256: sha256.Sum256([]byte(body)), Method: "POST", Session: a.sid, TokenID: "5b1cc2114fb5b8e6"})}
	if code, answer := postMCP(t, g.brokerURL, h, body); code != http.StatusOK || !strings.Contains(answer, "pages") {
		t.Fatalf("first use: %d %s", code, answer)
	}
	for range 3 {
		if code, answer := postMCP(t, g.brokerURL, h, body); code != http.StatusForbidden || !strings.Contains(answer, "its decision was served before") {
			t.Errorf("replay: %d %s; want 403 saying the decision was served", code, answer)
		}
	}
	g.up.mu.Lock()
	ran := len(g.up.args)
	g.up.mu.Unlock()
	if ran != 1 {
		t.Errorf("the upstream ran the call %d times, want once", ran)
	}
	if n := strings.Count(strings.Join(g.audit.Codes(), " "), CodeDecisionReplayed); n != 3 {
		t.Errorf("%d %s records, want 3 (audit codes %v)", n, CodeDecisionReplayed, g.audit.Codes())
	}
	// Under the token that made the decision: the replayer has it.
	if rec := g.audit.Last(t); rec.Code != CodeDecisionReplayed || rec.TokenID != "5b1cc2114fb5b8e6" || rec.Agent != "bot-1" {
		t.Errorf("last record %+v, want a replay under token 5b1cc2114fb5b8e6 of bot-1", rec)
	}
}

// A decision serves only the request it was made for: the stream's GET
// cannot end the session as a DELETE, nor a call decided in one session
// run in another.
func TestDecisionNamesItsRequest(t *testing.T) {
	g := newGateway(t)
	a, b := newRawAgent(t, g), newRawAgent(t, g)
	body := `{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"notion__get_pages","arguments":{"workspace_id":"ws_abc123"}}}`
	for _, tc := range []struct {
		name, method, body, decidedMethod, decidedSession, session string
	}{
		{"GET as DELETE", "DELETE", "", "GET", a.sid, a.sid},
		{"another session", "POST", body, "POST", a.sid, b.sid},
		{"no session for one", "POST", body, "POST", "", a.sid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := "d-" + strings.ReplaceAll(tc.name, " ", "-")
			h := map[string]string{authz.HeaderAgent: "bot-1", authz.HeaderRole: "reader", authz.HeaderDecisionID: id,
				"Mcp-Session-Id": tc.session, "Mcp-Protocol-Version": rawVersion,
				authz.HeaderDecision: g.signer.Sign(authz.Decision{ID: id, Agent: "bot-1", Role: "reader", Verdict: "allow",
					BodySHA256: sha256.Sum256([]byte(tc.body)), Method: tc.decidedMethod, Session: tc.decidedSession})}
			code, answer := sendMCP(t, tc.method, g.brokerURL, h, tc.body)
			if code != http.StatusForbidden || !strings.Contains(answer, "method or session is not the one decided on") {
				t.Errorf("%s %d %s; want 403", tc.method, code, answer)
			}
		})
	}
	// a's session lives on, and nothing ran.
	if got := a.post(`{"jsonrpc":"2.0","id":9,"method":"ping"}`); len(got) == 0 || !strings.Contains(got[0], `"result"`) {
		t.Errorf("the session a DELETE was refused for: %q", got)
	}
	g.up.mu.Lock()
	defer g.up.mu.Unlock()
	if len(g.up.args) != 0 {
		t.Errorf("refused calls ran: %v", g.up.args)
	}
}

type failingLedger struct{}

func (failingLedger) Spend(context.Context, string, time.Time) (bool, error) {
	return false, errors.New("redis: connection refused")
}

// A decision the broker cannot record as served is not served: it could
// not tell a replay from it. The agent may try again.
func TestDecisionThatCannotBeRecordedIsRefused(t *testing.T) {
	g := newGatewayOver(t, false, func(o *Options) { o.Spent = failingLedger{} })
	body := `{"jsonrpc":"2.0","id":1,"method":"tools/list"}`
	h := map[string]string{authz.HeaderAgent: "bot-1", authz.HeaderRole: "reader", authz.HeaderDecisionID: "d1",
		authz.HeaderDecision: g.signer.Sign(authz.Decision{ID: "d1", Agent: "bot-1", Role: "reader", Verdict: "allow",
			BodySHA256: sha256.Sum256([]byte(body)), Method: "POST"})}
	code, answer := postMCP(t, g.brokerURL, h, body)
	if code != http.StatusServiceUnavailable || !strings.Contains(answer, "could not record the decision as served") || strings.Contains(answer, "redis") {
		t.Errorf("answer %d %s; want 503 saying so, without the store's error", code, answer)
	}
	if diff := cmp.Diff([]string{CodeDecisionUnrecorded}, g.audit.Codes()); diff != "" {
		t.Errorf("broker audit codes (-want +got):\n%s", diff)
	}
}

func TestResourceTemplates(t *testing.T) {
	g := newGateway(t)
	cs := g.connect(t, nil)
	ctx := context.Background()
	list, err := cs.ListResourceTemplates(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, rt := range list.ResourceTemplates {
		got = append(got, rt.URITemplate)
	}
	if diff := cmp.Diff([]string{"amg:notion:notion://ws_abc123/drafts/{id}"}, got); diff != "" {
		t.Errorf("templates (-want +got):\n%s", diff)
	}
	read, err := cs.ReadResource(ctx, &mcp.ReadResourceParams{URI: "amg:notion:notion://ws_abc123/drafts/d7"})
	if err != nil || len(read.Contents) != 1 || read.Contents[0].Text != "draft at notion://ws_abc123/drafts/d7" ||
		read.Contents[0].URI != "amg:notion:notion://ws_abc123/drafts/d7" {
		t.Errorf("read through a template: %v %+v", err, read)
	}
	if _, err := cs.ReadResource(ctx, &mcp.ReadResourceParams{URI: "amg:notion:notion://ws_other/drafts/d7"}); err == nil || !strings.Contains(err.Error(), "not granted") {
		t.Errorf("ungranted template read: %v", err)
	}
}

// A resource the role may read is read from its upstream even when the
// upstream does not list it (one it links to, or makes on demand, which
// the protocol does not promise to list), under the URI the agent asked
// for; one the upstream does not serve either is the upstream's error.
func TestUnlistedResourcesAreRead(t *testing.T) {
	g := newGateway(t)
	cs := g.connect(t, nil)
	ctx := context.Background()
	read, err := cs.ReadResource(ctx, &mcp.ReadResourceParams{URI: "amg:notion:notion://ws_abc123/unlisted"})
	if err != nil || len(read.Contents) != 1 || read.Contents[0].Text != "not listed" ||
		read.Contents[0].URI != "amg:notion:notion://ws_abc123/unlisted" {
		t.Errorf("read of a resource the upstream does not list: %v %+v", err, read)
	}
	_, err = cs.ReadResource(ctx, &mcp.ReadResourceParams{URI: "amg:notion:notion://ws_abc123/gone"})
	var rpcErr *jsonrpc.Error
	if !errors.As(err, &rpcErr) || rpcErr.Code != mcp.CodeResourceNotFound || !strings.HasPrefix(rpcErr.Message, `upstream "notion": `) {
		t.Errorf("read of a resource the upstream does not serve: %v", err)
	}
}

func TestSubscriptionsReachTheUpstream(t *testing.T) {
	g := newGateway(t)
	cs := g.connect(t, nil)
	ctx := context.Background()
	uri := "amg:notion:notion://ws_abc123/p1"
	if err := cs.Subscribe(ctx, &mcp.SubscribeParams{URI: uri}); err != nil {
		t.Fatal(err)
	}
	if err := cs.Unsubscribe(ctx, &mcp.UnsubscribeParams{URI: uri}); err != nil {
		t.Fatal(err)
	}
	if err := cs.Subscribe(ctx, &mcp.SubscribeParams{URI: "amg:notion:notion://ws_other/p2"}); err == nil || !strings.Contains(err.Error(), "not granted") {
		t.Errorf("ungranted subscription: %v", err)
	}
	g.up.mu.Lock()
	defer g.up.mu.Unlock()
	if diff := cmp.Diff([]string{"+notion://ws_abc123/p1", "-notion://ws_abc123/p1"}, g.up.subs); diff != "" {
		t.Errorf("upstream subscriptions (-want +got):\n%s", diff)
	}
}

func TestSessionOwnerIsForgottenWhenTheSessionEnds(t *testing.T) {
	g := newGateway(t)
	cs := g.connect(t, nil)
	sid := cs.ID()
	b := g.broker
	if _, ok := b.owners.Load(sid); !ok {
		t.Fatalf("session %q has no owner", sid)
	}
	cs.Close()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if _, ok := b.owners.Load(sid); !ok {
			return
		}
	}
	t.Error("the owner of an ended session is still kept")
}

// A completion reaches the upstream of the prompt or template it refers
// to, in the upstream's names, for an agent with a session and one
// without (protocol 2026-07-28, which sends it without an Mcp-Name header).
func TestCompletionReachesTheUpstreamInItsOwnNames(t *testing.T) {
	g := newGateway(t)
	ctx := context.Background()
	for _, cs := range []*mcp.ClientSession{g.connect(t, nil), g.connectStateless(t, g.token, nil)} {
		res, err := cs.Complete(ctx, &mcp.CompleteParams{Ref: &mcp.CompleteReference{Type: "ref/prompt", Name: "notion__summarize"},
			Argument: mcp.CompleteParamsArgument{Name: "page", Value: "p"}})
		if err != nil || len(res.Completion.Values) != 1 || res.Completion.Values[0] != "ref/prompt summarize p" {
			t.Errorf("prompt completion: %v %+v", err, res)
		}
		res, err = cs.Complete(ctx, &mcp.CompleteParams{Ref: &mcp.CompleteReference{Type: "ref/resource", URI: "amg:notion:notion://ws_abc123/drafts/{id}"},
			Argument: mcp.CompleteParamsArgument{Name: "id", Value: "d"}})
		if err != nil || len(res.Completion.Values) != 1 || res.Completion.Values[0] != "ref/resource notion://ws_abc123/drafts/{id} d" {
			t.Errorf("resource completion: %v %+v", err, res)
		}
		if _, err := cs.Complete(ctx, &mcp.CompleteParams{Ref: &mcp.CompleteReference{Type: "ref/prompt", Name: "notion__secret_prompt"},
			Argument: mcp.CompleteParamsArgument{Name: "a", Value: "x"}}); err == nil || !strings.Contains(err.Error(), "not granted") {
			t.Errorf("completion of an ungranted prompt: %v", err)
		}
	}
}

// rawAgent speaks MCP over plain HTTP, so that a test sees the messages of
// a response stream in the order they were sent.
type rawAgent struct {
	t          *testing.T
	url, token string
	sid        string
	// version is the protocol version the agent speaks, rawVersion if
	// empty. From 2026-07-28 on, the agent sends the Mcp-Method and
	// Mcp-Name headers of its messages; their _meta is the test's to write.
	version string
}

const rawVersion = "2025-06-18"

func newRawAgent(t *testing.T, g *gateway) *rawAgent {
	a := &rawAgent{t: t, url: g.url, token: g.token}
	a.post(`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"` + rawVersion + `","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}`)
	a.post(`{"jsonrpc":"2.0","method":"notifications/initialized"}`)
	return a
}

// post sends one message and returns the messages of the response, in
// order.
func (a *rawAgent) post(body string) []string {
	a.t.Helper()
	resp, err := a.send(context.Background(), body)
	if err != nil {
		a.t.Fatal(err)
	}
	defer resp.Body.Close()
	if sid := resp.Header.Get("Mcp-Session-Id"); sid != "" {
		a.sid = sid
	}
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		a.t.Fatalf("%s: HTTP %d: %s", body, resp.StatusCode, data)
	}
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		if len(bytes.TrimSpace(data)) == 0 {
			return nil
		}
		return []string{string(bytes.TrimSpace(data))}
	}
	var msgs []string
	for _, event := range strings.Split(string(data), "\n\n") {
		for _, line := range strings.Split(event, "\n") {
			if v, ok := strings.CutPrefix(line, "data: "); ok {
				msgs = append(msgs, v)
			}
		}
	}
	return msgs
}

// setVersion sets the headers of the agent's protocol version for a
// message, body.
func (a *rawAgent) setVersion(h http.Header, body string) {
	version := a.version
	if version == "" {
		version = rawVersion
	}
	h.Set("Mcp-Protocol-Version", version)
	if version < perRequestFrom {
		return
	}
	parsed, err := mcpfilter.Parse([]byte(body), nil)
	if err != nil || len(parsed.Messages) != 1 || parsed.Messages[0].Method == "" {
		return
	}
	m := parsed.Messages[0]
	h.Set("Mcp-Method", m.Method)
	if m.Name != "" {
		h.Set("Mcp-Name", m.Name)
	} else if m.URI != "" {
		h.Set("Mcp-Name", m.URI)
	}
}

// An upstream's progress and log messages about a call reach the agent on
// the call's own stream, in order and before its result; the log level
// the agent set reaches the upstream.
func TestProgressAndLogsArriveBeforeTheResult(t *testing.T) {
	bothPaths(t, testProgressAndLogs)
}

func testProgressAndLogs(t *testing.T, g *gateway) {
	a := newRawAgent(t, g)
	a.post(`{"jsonrpc":"2.0","id":2,"method":"logging/setLevel","params":{"level":"info"}}`)
	a.post(`{"jsonrpc":"2.0","id":"warm","method":"tools/call","params":{"name":"notion__get_pages","arguments":{"workspace_id":"ws_abc123"}}}`)
	got := a.post(`{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"notion__slow","arguments":{},"_meta":{"progressToken":"p-7"}}}`)
	var kinds []string
	for _, m := range got {
		var msg struct {
			Method string
			ID     json.RawMessage
			Params struct {
				ProgressToken any
				Progress      float64
				Data          any
			}
		}
		if err := json.Unmarshal([]byte(m), &msg); err != nil {
			t.Fatalf("%s: %v", m, err)
		}
		switch msg.Method {
		case "notifications/progress":
			kinds = append(kinds, fmt.Sprintf("progress %v %v", msg.Params.ProgressToken, msg.Params.Progress))
		case "notifications/message":
			kinds = append(kinds, fmt.Sprintf("log %v", msg.Params.Data))
		case "":
			kinds = append(kinds, "result "+string(msg.ID))
		}
	}
	want := []string{"progress p-7 1", "progress p-7 2", "log halfway", "result 3"}
	if !slices.Equal(kinds, want) {
		t.Errorf("messages on the call's stream = %q, want %q", kinds, want)
	}
	g.checkPath(t, "notion__slow")
}

// Progress is matched to a call by tokens of the protocol's types alone,
// whatever the two sides decoded them into; a token of another type (which
// authz refuses from agents) matches nothing and panics nowhere.
func TestProgressTokenMatching(t *testing.T) {
	var f inflight
	ctx, cancel := context.WithCancel(context.Background()) // a context of its own
	defer cancel()
	for _, token := range []any{"p-1", float64(7), int64(7), json.Number("7")} {
		done := f.add(ctx, nil, "notion", token)
		if got, ok := f.byToken("notion", token); !ok || got.ctx != ctx {
			t.Errorf("token %#v: no match", token)
		}
		if _, ok := f.byToken("other", token); ok {
			t.Errorf("token %#v matched another server's call", token)
		}
		done()
	}
	for _, token := range []any{map[string]any{"k": 1.0}, []any{1.0}, true, nil} {
		done := f.add(ctx, nil, "notion", token)
		if _, ok := f.byToken("notion", token); ok {
			t.Errorf("token %#v matched, want no token", token)
		}
		done()
	}
}

// An agent cancelling a call cancels it upstream.
func TestCancellationReachesTheUpstream(t *testing.T) {
	bothPaths(t, func(t *testing.T, g *gateway) {
		cs := g.connect(t, nil)
		g.warm(t, cs)
		cancelledCallReachesUpstream(t, g, cs)
	})
}

// cancelledCallReachesUpstream has cs start a call of the upstream's wait
// tool, cancel it, and checks that the upstream's call is cancelled and
// cs's returns an error.
func cancelledCallReachesUpstream(t *testing.T, g *gateway, cs *mcp.ClientSession) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errs := make(chan error, 1)
	go func() {
		_, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "notion__wait", Arguments: json.RawMessage(`{}`)})
		errs <- err
	}()
	<-g.up.started
	cancel()
	g.up.awaitCancelled(t, "the upstream's call was not cancelled")
	if err := <-errs; err == nil {
		t.Error("a cancelled call returned no error")
	}
	g.checkPath(t, "notion__wait")
}

// An upstream's resource update reaches the agent that subscribed, under
// the URI the agent sees.
func TestResourceUpdatesAreRelayed(t *testing.T) {
	bothPaths(t, func(t *testing.T, g *gateway) {
		_, updates := subscribed(t, g)
		updateReaches(t, g, updates, "the resource update did not reach the agent")
	})
}

// Each agent subscribed to a resource hears each of its updates once:
// the copies of an update that every agent's upstream subscription brings
// are one, and two updates close together are two.
func TestResourceUpdatesOncePerUpdate(t *testing.T) {
	bothPaths(t, func(t *testing.T, g *gateway) {
		_, first := subscribed(t, g)
		_, second := subscribed(t, g)
		for range 2 {
			if err := g.up.srv.ResourceUpdated(context.Background(), &mcp.ResourceUpdatedNotificationParams{URI: subscribedUpstreamURI}); err != nil {
				t.Fatal(err)
			}
			time.Sleep(50 * time.Millisecond) // well within the window in which copies are one
		}
		for name, updates := range map[string]<-chan string{"first": first, "second": second} {
			heard := 0
			for done := false; !done; {
				select {
				case <-updates:
					heard++
				case <-time.After(500 * time.Millisecond): // for any late copy
					done = true
				}
			}
			if heard != 2 {
				t.Errorf("the %s agent heard %d updates, want 2", name, heard)
			}
		}
	})
}

// subscribedURI is the resource subscribed assigns, as the agent sees it,
// and subscribedUpstreamURI the same as the upstream knows it.
const (
	subscribedURI         = "amg:notion:notion://ws_abc123/p1"
	subscribedUpstreamURI = "notion://ws_abc123/p1"
)

// updateReaches has the upstream announce an update of the resource
// subscribed assigns, and fails with failure unless updates brings it to
// the agent, under the URI the agent sees.
func updateReaches(t *testing.T, g *gateway, updates <-chan string, failure string) {
	t.Helper()
	if err := g.up.srv.ResourceUpdated(context.Background(), &mcp.ResourceUpdatedNotificationParams{URI: subscribedUpstreamURI}); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-updates:
		if got != subscribedURI {
			t.Errorf("update for %q, want %q", got, subscribedURI)
		}
	case <-time.After(10 * time.Second):
		t.Fatal(failure)
	}
}

// subscribed connects an agent subscribed to subscribedURI, and returns
// its session and the URIs of the updates it hears.
func subscribed(t *testing.T, g *gateway) (*mcp.ClientSession, <-chan string) {
	t.Helper()
	updates := make(chan string, 4)
	cs := g.connect(t, &mcp.ClientOptions{ResourceUpdatedHandler: func(_ context.Context, req *mcp.ResourceUpdatedNotificationRequest) {
		updates <- req.Params.URI
	}})
	if err := cs.Subscribe(context.Background(), &mcp.SubscribeParams{URI: subscribedURI}); err != nil {
		t.Fatal(err)
	}
	return cs, updates
}

// A cancelled call leaves the agent's upstream session, and its resource
// subscriptions with it, in place: updates still reach the agent.
func TestCancelledCallKeepsTheSubscriptions(t *testing.T) {
	bothPaths(t, func(t *testing.T, g *gateway) {
		cs, updates := subscribed(t, g)
		g.warm(t, cs)
		as := g.broker.sessionByID(cs.ID())
		as.mu.Lock()
		before := as.ups["notion"]
		as.mu.Unlock()
		ctx, cancel := context.WithCancel(context.Background())
		go cs.CallTool(ctx, &mcp.CallToolParams{Name: "notion__wait", Arguments: json.RawMessage(`{}`)})
		<-g.up.started
		cancel()
		<-g.up.cancelled
		eventually(t, "the cancelled call is over", func() bool { return !as.busy() })
		as.mu.Lock()
		after := as.ups["notion"]
		as.mu.Unlock()
		if after != before {
			t.Error("a cancelled call dropped the agent's upstream session")
		}
		updateReaches(t, g, updates, "after a cancelled call, the resource update did not reach the agent")
	})
}

// A sampling request the upstream gives up on, while its call goes on, is
// cancelled at the agent too, on the SDK path (for the direct path see
// TestDirectPathRelaysTheUpstreamsCancellation).
func TestRelayedRequestIsCancelledWithTheUpstreams(t *testing.T) {
	t.Run("sdk", func(t *testing.T) {
		g := newGateway(t)
		cancelled, release := make(chan struct{}), make(chan struct{})
		g.up.srv.AddTool(&mcp.Tool{Name: "ask", InputSchema: json.RawMessage(`{"type":"object"}`)}, func(ctx context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			sampling, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
			defer cancel()
			req.Session.CreateMessage(sampling, &mcp.CreateMessageParams{MaxTokens: 10,
				Messages: []*mcp.SamplingMessage{{Role: "user", Content: &mcp.TextContent{Text: "what now?"}}}})
			// Within the call timeout, so that a broken test fails below.
			select {
			case <-cancelled:
			case <-time.After(3 * time.Second):
			}
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "gave up"}}}, nil
		})
		cs := g.connect(t, &mcp.ClientOptions{
			CreateMessageHandler: func(ctx context.Context, _ *mcp.CreateMessageRequest) (*mcp.CreateMessageResult, error) {
				select {
				case <-ctx.Done():
					close(cancelled)
				case <-release:
				}
				return nil, errors.New("no answer")
			},
		})
		// Before the session closes, which waits for its handlers.
		t.Cleanup(func() { close(release) })
		g.warm(t, cs)
		if _, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "notion__ask", Arguments: json.RawMessage(`{}`)}); err != nil {
			t.Fatal(err)
		}
		select {
		case <-cancelled:
		default:
			t.Fatal("the agent's sampling request was not cancelled when the upstream gave up on it")
		}
	})
}

// An upstream connection the gateway cannot prepare (a credential it
// cannot resolve) fails the call with an error that says where the fault
// lies, without the configuration it names: that is for the gateway's
// log, which gets it, not for the agent or the audit log.
func TestUpstreamSetupErrorsStayInTheLog(t *testing.T) {
	const secretPath = "/run/secrets/files-key"
	files := newUpstream()
	var connects atomic.Int32
	transport := func(ctx context.Context) (mcp.Transport, error) {
		if connects.Add(1) == 1 { // the catalogue's
			return files.transport(ctx)
		}
		return nil, errors.New("header Authorization: file:" + secretPath + " does not exist")
	}
	var log syncbuf.Buffer
	g := newGatewayTimed(t, false, 5*time.Second, []Upstream{{Name: "files", Transport: transport}},
		func(o *Options) { o.Logger = slog.New(slog.NewTextHandler(&log, nil)) })
	cs := g.connect(t, nil)
	_, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "files__get_pages", Arguments: json.RawMessage(`{"workspace_id":"ws_abc123"}`)})
	const want = `upstream "files": the gateway could not prepare its connection to it (its log says why)`
	if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), secretPath) {
		t.Errorf("call: %v, want %s", err, want)
	}
	if !strings.Contains(log.String(), secretPath) {
		t.Errorf("the gateway's log does not say why:\n%s", log.String())
	}
	if rec := g.audit.Await(t, 1)[0]; rec.UpstreamStatus != "error" || strings.Contains(rec.Reason, secretPath) {
		t.Errorf("the failed call is audited as %s %q, want an error without the configuration", rec.UpstreamStatus, rec.Reason)
	}
}
