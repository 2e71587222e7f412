//lint:file-ignore SA1019 logging is deprecated from protocol 2026-07-28 on; the gateway serves the versions that have it

package broker

import (
	"context"
	"encoding/json"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// A log level the agent sets while its session with an upstream is
// opening reaches that upstream once it is open.
func TestLogLevelSetWhileConnectingReachesTheUpstream(t *testing.T) {
	files := newUpstream()
	var slow atomic.Bool
	entered, release := make(chan struct{}, 1), make(chan struct{})
	transport := func(ctx context.Context) (mcp.Transport, error) {
		if slow.Load() {
			entered <- struct{}{}
			<-release
		}
		return files.transport(ctx)
	}
	g := newGatewayTimed(t, false, 5*time.Second, []Upstream{{Name: "files", Transport: transport, ConnectTimeout: time.Minute}})
	logs := make(chan any, 4)
	cs := g.connect(t, &mcp.ClientOptions{LoggingMessageHandler: func(_ context.Context, req *mcp.LoggingMessageRequest) {
		logs <- req.Params.Data
	}})
	slow.Store(true) // the catalogue is listed: from now on, connecting waits for release
	done := make(chan error, 1)
	go func() {
		_, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "files__slow", Arguments: json.RawMessage(`{}`)})
		done <- err
	}()
	<-entered
	slow.Store(false)
	if err := cs.SetLoggingLevel(context.Background(), &mcp.SetLoggingLevelParams{Level: "info"}); err != nil {
		t.Fatal(err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	select {
	case data := <-logs:
		if data != "halfway" {
			t.Errorf("log message %v, want the upstream's info message only", data)
		}
	case <-time.After(5 * time.Second): // the client may hand it over after the result
		t.Error("the upstream's info message did not reach the agent: it did not get the level")
	}
}

// stallLogLevel makes srv take logging/setLevel and never answer it.
func stallLogLevel(srv *mcp.Server) {
	srv.AddReceivingMiddleware(func(next mcp.MethodHandler) mcp.MethodHandler {
		return func(ctx context.Context, method string, req mcp.Request) (mcp.Result, error) {
			if method == "logging/setLevel" {
				<-ctx.Done()
				return nil, ctx.Err()
			}
			return next(ctx, method, req)
		}
	})
}

// An upstream that never answers logging/setLevel costs the agent the
// level there, not its calls: the first call, which opens the session
// the level goes to, is answered, and so is the agent's next
// logging/setLevel, each within the upstream's timeouts.
func TestLogLevelOfAnUpstreamThatNeverAnswers(t *testing.T) {
	files := newUpstream()
	stallLogLevel(files.srv)
	g := newGatewayTimed(t, false, 5*time.Second, []Upstream{{Name: "files", Transport: files.transport, CallTimeout: time.Second, ConnectTimeout: time.Second}})
	cs := g.connect(t, nil)
	// Without an upstream session yet, the gateway only notes the level.
	if err := cs.SetLoggingLevel(context.Background(), &mcp.SetLoggingLevelParams{Level: "info"}); err != nil {
		t.Fatal(err)
	}
	// A failsafe, far beyond the upstream's timeouts: without one, a
	// test that fails would hang.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "files__get_pages", Arguments: json.RawMessage(`{"workspace_id":"w"}`)})
	if ctx.Err() != nil {
		t.Fatal("the first call waited for the upstream to take the log level, which it never does")
	}
	if err != nil || res.IsError {
		t.Fatalf("the first call: %v %+v", err, res)
	}
	if err := cs.SetLoggingLevel(ctx, &mcp.SetLoggingLevelParams{Level: "debug"}); err != nil {
		t.Fatalf("logging/setLevel with the upstream session open: %v", err)
	}
}

// The agent's logging/setLevel goes to all its upstream sessions at once:
// one that is slow to answer does not make the agent wait for it before
// the others are asked too.
func TestLogLevelGoesToTheUpstreamsTogether(t *testing.T) {
	files := newUpstream()
	g := newGatewayTimed(t, false, 30*time.Second, []Upstream{{Name: "files", Transport: files.transport, CallTimeout: 30 * time.Second}})
	// Each upstream answers once the other has been asked too.
	var asked atomic.Int32
	both := make(chan struct{})
	for _, srv := range []*mcp.Server{g.up.srv, files.srv} {
		srv.AddReceivingMiddleware(func(next mcp.MethodHandler) mcp.MethodHandler {
			return func(ctx context.Context, method string, req mcp.Request) (mcp.Result, error) {
				if method != "logging/setLevel" {
					return next(ctx, method, req)
				}
				if asked.Add(1) == 2 {
					close(both)
				}
				select {
				case <-both:
					return next(ctx, method, req)
				case <-ctx.Done():
					return nil, ctx.Err()
				}
			}
		})
	}
	cs := g.connect(t, nil)
	for _, tool := range []string{"notion__get_pages", "files__get_pages"} {
		if _, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: tool, Arguments: json.RawMessage(`{"workspace_id":"ws_abc123"}`)}); err != nil {
			t.Fatal(err)
		}
	}
	set := make(chan error, 1)
	go func() { set <- cs.SetLoggingLevel(context.Background(), &mcp.SetLoggingLevelParams{Level: "info"}) }()
	// A failsafe, far below the upstreams' call timeout, which is when
	// the first upstream asked would give up and the next be asked.
	select {
	case <-both:
	case <-time.After(10 * time.Second):
		t.Fatalf("the upstreams were asked one after the other (%d asked)", asked.Load())
	}
	if err := <-set; err != nil {
		t.Fatal(err)
	}
}
