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
