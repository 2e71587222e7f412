package gateway

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

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
