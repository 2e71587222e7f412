package broker

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// Close ends the agent sessions' upstream sessions all at once, and the
// catalogues' with them, as an ended agent session closes its own
// (TestEndedSessionClosesItsUpstreamSessionsTogether): one upstream slow
// to end a session does not hold up the rest, nor the shutdown.
func TestCloseEndsTheAgentSessionsTogether(t *testing.T) {
	g := newGatewayOver(t, true)
	for range 3 {
		cs := g.connect(t, nil)
		if _, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "notion__get_pages", Arguments: json.RawMessage(`{"workspace_id":"ws_abc123"}`)}); err != nil {
			t.Fatal(err)
		}
	}
	held := g.up.holdDeletes()
	// As in TestEndedSessionClosesItsUpstreamSessionsTogether.
	failsafe := time.AfterFunc(3*time.Second, func() { close(held) })
	closed := make(chan struct{})
	go func() { g.broker.Close(); close(closed) }()
	for range 4 { // the three agent sessions' and the catalogue's
		<-g.up.deleting
	}
	if !failsafe.Stop() {
		t.Fatal("Close ended the upstream sessions one after the other")
	}
	close(held)
	<-closed
}

// Close waits for the upstream sessions already closing, those of a
// session its agent ended just before included: once Close returns, no
// stdio process of an agent session is left, for the gateway exits next
// and would leave it running.
func TestCloseWaitsForUpstreamSessionsClosing(t *testing.T) {
	var n atomic.Int32
	transport := func(ctx context.Context) (mcp.Transport, error) {
		if n.Add(1) == 1 {
			return stdioUpstreamOf(time.Second, false)(ctx) // the catalogue's exits when its input ends
		}
		return stdioUpstreamOf(time.Second, true)(ctx) // the agent's waits to be told to terminate
	}
	g := newGatewayTimed(t, false, 5*time.Second, []Upstream{{Name: "files", Transport: transport}})
	cs := g.connect(t, nil)
	res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "files__get_pages", Arguments: json.RawMessage(`{}`)})
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimPrefix(res.Content[0].(*mcp.TextContent).Text, "pid "))
	if err != nil {
		t.Fatal(err)
	}
	cs.Close() // the agent ends its session as the gateway shuts down
	g.broker.Close()
	if syscall.Kill(pid, 0) == nil {
		syscall.Kill(pid, syscall.SIGKILL)
		t.Errorf("the agent session's stdio process %d was still running when Close returned", pid)
	}
}

// Close waits for upstream sessions to end up to its timeout, not longer:
// an upstream that does not let a session end holds up no shutdown.
func TestCloseHasATimeout(t *testing.T) {
	g := newGatewayOver(t, true, func(o *Options) { o.CloseTimeout = 10 * time.Millisecond })
	held := g.up.holdDeletes()
	failsafe := time.AfterFunc(3*time.Second, func() { close(held) })
	g.broker.Close()
	if !failsafe.Stop() {
		t.Fatal("Close waited for the upstream past its timeout")
	}
	close(held)
}
