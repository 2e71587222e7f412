package gateway

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/amgateway/amg/internal/audit"
	"github.com/amgateway/amg/internal/broker"
	"github.com/amgateway/amg/internal/config"
	"github.com/amgateway/amg/internal/demo"
)

// A gateway told to stop answers the calls waiting for a human at once,
// saying why, and ends the agents' streams of server messages, rather than
// wait out its shutdown deadline for them and then drop them.
func TestShutdownAnswersWaitingCallsAndEndsStreams(t *testing.T) {
	cfg := testConfig(t, map[string]*config.Upstream{"notion": {Name: "notion", Builtin: "demo", ConnectTimeout: 5 * time.Second,
		CallTimeout: 30 * time.Second}}, replicaRole)
	gw, err := New(cfg, &Options{Builtins: Builtins{"demo": demo.NewServer(nil).MCP()}})
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Close()
	if err := gw.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- gw.Serve(ctx) }()
	token, _, err := gw.IssueToken(context.Background(), "agent-1", "ops", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cs := connectAgent(t, "http://"+gw.MCPAddr()+config.MCPPath, token)

	called := make(chan error, 1)
	go func() {
		// Should the call wait on, it is given up after a while, so that
		// the test fails rather than hangs.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "notion__delete_page", Arguments: json.RawMessage(`{"page_id":"pg_1"}`)})
		called <- err
	}()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if list, _ := gw.approvals.List(context.Background(), "pending"); len(list) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the call was not parked")
		}
	}
	stopped := time.Now()
	stop()
	if err := <-called; err == nil || !strings.Contains(err.Error(), "approval cancelled: the gateway shut down before a decision") {
		t.Errorf("the waiting call: %v, want an error saying the gateway shut down", err)
	}
	if err := <-served; err != nil {
		t.Errorf("serve: %v", err)
	}
	// The listeners' shutdown deadline is 10 s: a gateway that waited for
	// the agent's stream took all of it.
	if took := time.Since(stopped); took >= 9*time.Second {
		t.Errorf("the shutdown took %v: it waited for the agent", took.Round(time.Millisecond))
	}
}

const slowRole = `
role: r
servers:
  slow:
    tools:
      - name: wait
`

// slowGateway is a gateway serving an agent, as startSlow starts it, whose
// upstream "slow" has a tool "wait" that runs until released.
type slowGateway struct {
	*Gateway
	stop   context.CancelFunc // begins the shutdown
	served chan error         // Serve's return
	agent  *mcp.ClientSession
	// started has a value each time a call of wait begins upstream;
	// release ends them all.
	started  chan struct{}
	released chan struct{}
	release  func()
}

// slowUpstreamPaths are the two ways startSlow reaches its upstream, for
// the tests that run on both.
var slowUpstreamPaths = []struct {
	name    string
	viaHTTP bool
}{
	{"in-process upstream", false},
	{"HTTP upstream", true},
}

// startSlow starts a slowGateway; with viaHTTP its upstream is reached over
// Streamable HTTP, else in process.
func startSlow(t *testing.T, viaHTTP bool) *slowGateway {
	t.Helper()
	sg := &slowGateway{served: make(chan error, 1), started: make(chan struct{}, 16), released: make(chan struct{})}
	sg.release = sync.OnceFunc(func() { close(sg.released) })
	srv := mcp.NewServer(&mcp.Implementation{Name: "slow", Version: "1"}, nil)
	mcp.AddTool(srv, &mcp.Tool{Name: "wait"}, func(ctx context.Context, _ *mcp.CallToolRequest, _ struct{}) (*mcp.CallToolResult, any, error) {
		sg.started <- struct{}{}
		select {
		case <-sg.released:
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "done"}}}, nil, nil
	})
	up := &config.Upstream{Name: "slow", Builtin: "slow", ConnectTimeout: 5 * time.Second, CallTimeout: time.Minute}
	if viaHTTP {
		hs := httptest.NewServer(mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, nil))
		t.Cleanup(hs.Close)
		// A call left running must not hold up the server's Close.
		t.Cleanup(sg.release)
		up.Builtin, up.URL = "", hs.URL
	}
	cfg := testConfig(t, map[string]*config.Upstream{"slow": up}, slowRole)
	gw, err := New(cfg, &Options{Builtins: Builtins{"slow": srv}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gw.Close() })
	sg.Gateway = gw
	if err := gw.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	t.Cleanup(stop)
	sg.stop = stop
	go func() { sg.served <- gw.Serve(ctx) }()
	token, _, err := gw.IssueToken(context.Background(), "agent-1", "r", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	sg.agent = connectAgent(t, "http://"+gw.MCPAddr()+config.MCPPath, token)
	return sg
}

// callWait calls wait as the agent, and returns once the call runs
// upstream; the call's error comes on the channel.
func (sg *slowGateway) callWait(t *testing.T) <-chan error {
	t.Helper()
	called := make(chan error, 1)
	go func() {
		// Should the call never be answered, it is given up after a
		// while, so that the test fails rather than hangs.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, err := sg.agent.CallTool(ctx, &mcp.CallToolParams{Name: "slow__wait", Arguments: json.RawMessage(`{}`)})
		called <- err
	}()
	select {
	case <-sg.started:
	case err := <-called:
		t.Fatalf("the call did not reach the upstream: %v", err)
	}
	return called
}

// Once the gateway begins to shut down, its MCP listener closed while it
// lets the calls in flight finish, /readyz no longer says it is ready.
func TestReadyzIsNotReadyWhileDraining(t *testing.T) {
	sg := startSlow(t, false)
	called := sg.callWait(t)
	sg.stop()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		conn, err := net.Dial("tcp", sg.MCPAddr())
		if err != nil {
			break
		}
		conn.Close()
		if time.Now().After(deadline) {
			t.Fatal("the MCP listener still takes connections")
		}
	}
	resp, err := http.Get("http://" + sg.AdminAddr() + "/readyz")
	if err != nil {
		t.Errorf("draining, its MCP listener closed: /readyz unreachable (%v), want 503 \"shutting down\"", err)
	} else {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable || string(body) != "shutting down\n" {
			t.Errorf("draining, its MCP listener closed: /readyz = %d %q, want 503 \"shutting down\"", resp.StatusCode, body)
		}
	}
	sg.release()
	if err := <-called; err != nil {
		t.Errorf("the call in flight: %v, want its result", err)
	}
	if err := <-sg.served; err != nil {
		t.Errorf("serve: %v", err)
	}
}

// A call still running when the shutdown's grace is over is cut, on
// either path to its upstream: its agent is answered that the gateway
// shut down, and the audit log has the call's outcome, saying so.
func TestShutdownCutsTheCallsPastItsGrace(t *testing.T) {
	for _, tc := range slowUpstreamPaths {
		t.Run(tc.name, func(t *testing.T) {
			shortenListenerTimeouts(t, 100*time.Millisecond, &shutdownGrace)
			sg := startSlow(t, tc.viaHTTP)
			called := sg.callWait(t)
			sg.stop()
			if err := <-sg.served; err != nil {
				t.Errorf("serve: %v", err)
			}
			if err := sg.Close(); err != nil {
				t.Errorf("close: %v", err)
			}
			const why = "the gateway shut down before the upstream answered"
			if err, want := <-called, `upstream "slow": `+why; err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("the call cut: %v, want an error saying %q", err, want)
			}
			recs, _, err := audit.FileLog(filepath.Join(sg.cfg.DataDir, audit.FileName)).Search(context.Background(), audit.Query{Tool: "slow__wait"})
			if err != nil {
				t.Fatal(err)
			}
			var outcome *audit.Record
			for i, r := range recs {
				if r.Code == broker.CodeUpstreamError || r.Code == broker.CodeExecuted {
					outcome = &recs[i]
				}
			}
			if outcome == nil || outcome.Code != broker.CodeUpstreamError || outcome.UpstreamStatus != "error" || !strings.Contains(outcome.Reason, why) {
				t.Errorf("the cut call's outcome record: %+v, want upstream_error saying %q", outcome, why)
			}
		})
	}
}

// A gateway closed between Listen and Serve (amg serve refusing to go on,
// say) releases its ports.
func TestCloseReleasesTheListeners(t *testing.T) {
	cfg := loopbackConfig(t, "../../policies")
	cfg.BrokerListen = "127.0.0.1:0"
	gw, err := New(cfg, &Options{Builtins: Builtins{"demo": demo.NewServer(nil).MCP()}})
	if err != nil {
		t.Fatal(err)
	}
	if err := gw.Listen(); err != nil {
		gw.Close()
		t.Fatal(err)
	}
	addrs := []string{gw.MCPAddr(), gw.AuthzAddr(), gw.AdminAddr(), gw.BrokerAddr()}
	if err := gw.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	for _, addr := range addrs {
		lis, err := net.Listen("tcp", addr)
		if err != nil {
			t.Errorf("after Close, %s is still held: %v", addr, err)
			continue
		}
		lis.Close()
	}
}

// A call begun once the calls have been cut (a call that was still
// connecting, or still being checked, when the grace ended) is refused
// before it reaches its upstream: sent then, it would run there while its
// agent is told it was cut.
func TestCallsAfterTheCutAreNotSent(t *testing.T) {
	for _, tc := range slowUpstreamPaths {
		t.Run(tc.name, func(t *testing.T) {
			sg := startSlow(t, tc.viaHTTP)
			// The upstream session is opened first, so that only the calls
			// race the cut; from then on a call that reaches the upstream
			// returns at once.
			opened := sg.callWait(t)
			sg.release()
			if err := <-opened; err != nil {
				t.Fatal(err)
			}
			sg.broker.Cut()
			for i := range 10 {
				called := make(chan error, 1)
				go func() {
					_, err := sg.agent.CallTool(t.Context(), &mcp.CallToolParams{Name: "slow__wait", Arguments: json.RawMessage(`{}`)})
					called <- err
				}()
				select {
				case <-sg.started:
					t.Fatalf("call %d, begun after the cut, reached the upstream: %v", i+1, <-called)
				case err := <-called:
					if err == nil || !strings.Contains(err.Error(), `upstream "slow": the gateway is shutting down: the call was not sent`) {
						t.Fatalf("call %d, begun after the cut: %v, want it refused unsent", i+1, err)
					}
				}
			}
		})
	}
}
