package broker

import (
	"context"
	"encoding/json"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// An agent's session with one upstream is opened on its first call there;
// while that upstream is slow to accept it, the agent's calls to the
// others go on, and its other calls there wait for that one session.
func TestSlowUpstreamDoesNotHoldUpTheOthers(t *testing.T) {
	files := newUpstream()
	var slow atomic.Bool
	var connects atomic.Int32
	entered, release := make(chan struct{}, 2), make(chan struct{})
	transport := func(ctx context.Context) (mcp.Transport, error) {
		if slow.Load() {
			connects.Add(1)
			entered <- struct{}{}
			<-release
		}
		return files.transport(ctx)
	}
	g := newGatewayTimed(t, false, 5*time.Second, []Upstream{{Name: "files", Transport: transport, ConnectTimeout: time.Minute}})
	cs := g.connect(t, nil)
	slow.Store(true) // the catalogue is listed: from now on, connecting hangs
	call := func(name string) error {
		_, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: name, Arguments: json.RawMessage(`{"workspace_id":"ws_abc123"}`)})
		return err
	}
	filesDone := make(chan error, 2)
	go func() { filesDone <- call("files__get_pages") }()
	<-entered
	go func() { filesDone <- call("files__get_pages") }()
	// Should the call wait for the other upstream, that upstream is let
	// through after a while, so that the test fails rather than hangs.
	failsafe := time.AfterFunc(10*time.Second, func() { close(release) })
	if err := call("notion__get_pages"); err != nil {
		t.Fatal(err)
	}
	if !failsafe.Stop() {
		t.Fatal("a call to notion waited while the agent's session with files was being opened")
	}
	time.Sleep(50 * time.Millisecond) // for the second call to files to come
	close(release)
	for range 2 {
		if err := <-filesDone; err != nil {
			t.Errorf("a call to files, once it accepted the session: %v", err)
		}
	}
	if n := connects.Load(); n != 1 {
		t.Errorf("the agent's two calls to files opened %d sessions, want 1", n)
	}
}

// An agent session that ends closes its upstream sessions all at once:
// each close asks an upstream to end the session, which a busy upstream
// may take seconds to do, and one such upstream does not hold up the
// others.
func TestEndedSessionClosesItsUpstreamSessionsTogether(t *testing.T) {
	files := newUpstream()
	g := newGatewayTimed(t, true, 5*time.Second, []Upstream{{Name: "files", Transport: files.serveHTTP(t)}})
	cs := g.connect(t, nil)
	for _, name := range []string{"notion__get_pages", "files__get_pages"} {
		if _, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: name, Arguments: json.RawMessage(`{"workspace_id":"ws_abc123"}`)}); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	notionDeletes, filesDeletes := g.up.holdDeletes(), files.holdDeletes()
	// Should the closes come one after the other, the first is let go
	// after a while, so that the test fails rather than hangs; sooner than
	// the SDK's client gives up on it (5 s), which would let the second
	// come as well.
	failsafe := time.AfterFunc(3*time.Second, func() { close(notionDeletes); close(filesDeletes) })
	go cs.Close()
	<-g.up.deleting
	<-files.deleting
	if !failsafe.Stop() {
		t.Fatal("the upstream sessions were closed one after the other")
	}
	close(notionDeletes)
	close(filesDeletes)
}
