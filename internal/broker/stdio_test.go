package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// stdioUpstream is an upstream over stdio, a process for each session:
// this test binary, run again as the server (TestStdioUpstreamProcess).
func stdioUpstream(ctx context.Context) (mcp.Transport, error) {
	return stdioUpstreamOf(0, false)(ctx)
}

// stdioUpstreamOf is stdioUpstream whose server, if linger is set, does
// not exit when its input ends, as a server may not, and is told to
// terminate terminate later (0: the SDK's default).
func stdioUpstreamOf(terminate time.Duration, linger bool) func(context.Context) (mcp.Transport, error) {
	return func(context.Context) (mcp.Transport, error) {
		cmd := exec.Command(os.Args[0], "-test.run=^TestStdioUpstreamProcess$")
		cmd.Env = append(os.Environ(), "AMG_BROKER_STDIO_UPSTREAM=1")
		if linger {
			cmd.Env = append(cmd.Env, "AMG_BROKER_STDIO_LINGER=1")
		}
		return &mcp.CommandTransport{Command: cmd, TerminateDuration: terminate}, nil
	}
}

// hungStdioUpstream is an upstream over stdio whose process never
// answers, and ignores the end of its input and SIGTERM, each of which
// the SDK, closing its connection, gives terminate to take effect. kill
// kills the processes started.
func hungStdioUpstream(terminate time.Duration) (transport func(context.Context) (mcp.Transport, error), kill func()) {
	var mu sync.Mutex
	var started []*exec.Cmd
	transport = func(context.Context) (mcp.Transport, error) {
		cmd := exec.Command(os.Args[0], "-test.run=^TestStdioUpstreamProcess$")
		cmd.Env = append(os.Environ(), "AMG_BROKER_STDIO_UPSTREAM=hung")
		mu.Lock()
		started = append(started, cmd)
		mu.Unlock()
		return &mcp.CommandTransport{Command: cmd, TerminateDuration: terminate}, nil
	}
	kill = func() {
		mu.Lock()
		defer mu.Unlock()
		for _, cmd := range started {
			if cmd.Process != nil {
				cmd.Process.Kill()
			}
		}
	}
	return transport, kill
}

// TestStdioUpstreamProcess is no test: run by stdioUpstream, it serves a
// files upstream on its stdin and stdout until its client goes, whose
// get_pages answers with the process's id. Run by hungStdioUpstream, it
// waits for SIGKILL.
func TestStdioUpstreamProcess(t *testing.T) {
	switch os.Getenv("AMG_BROKER_STDIO_UPSTREAM") {
	case "1":
	case "hung":
		signal.Ignore(syscall.SIGTERM)
		for {
			time.Sleep(time.Hour)
		}
	default:
		return
	}
	srv := mcp.NewServer(&mcp.Implementation{Name: "files", Version: "1"}, nil)
	srv.AddTool(&mcp.Tool{Name: "get_pages", InputSchema: json.RawMessage(`{"type":"object"}`)}, func(context.Context, *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: fmt.Sprint("pid ", os.Getpid())}}}, nil
	})
	srv.Run(context.Background(), &mcp.StdioTransport{})
	if os.Getenv("AMG_BROKER_STDIO_LINGER") == "1" {
		for { // until a signal ends it
			time.Sleep(time.Hour)
		}
	}
	os.Exit(0)
}

// A stdio upstream whose process died between two of an agent's calls:
// the next call gets a new process, rather than an error for a call that
// never left the gateway.
func TestStdioUpstreamThatDiedBetweenCalls(t *testing.T) {
	g := newGatewayTimed(t, false, 5*time.Second, []Upstream{{Name: "files", Transport: stdioUpstream, ConnectTimeout: 20 * time.Second, CallTimeout: 20 * time.Second}})
	cs := g.connect(t, nil)
	call := func() string {
		t.Helper()
		res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "files__get_pages", Arguments: json.RawMessage(`{"workspace_id":"w"}`)})
		if err != nil || res.IsError {
			t.Fatalf("call: %v %+v", err, res)
		}
		return res.Content[0].(*mcp.TextContent).Text
	}
	first := call()
	pid, err := strconv.Atoi(strings.TrimPrefix(first, "pid "))
	if err != nil {
		t.Fatalf("the upstream said %q", first)
	}
	var as *agentSession
	g.broker.sessions.Range(func(_, v any) bool { as = v.(*agentSession); return false })
	as.mu.Lock()
	dying := as.ups["files"]
	as.mu.Unlock()
	if p, err := os.FindProcess(pid); err != nil || p.Kill() != nil {
		t.Fatalf("cannot end the upstream's process %d", pid)
	}
	eventually(t, "the gateway lets go of the session whose process died", func() bool {
		as.mu.Lock()
		defer as.mu.Unlock()
		return as.ups["files"] != dying
	})
	if second := call(); second == first {
		t.Errorf("the second call went to the process that died (%s)", first)
	}
}

// A stdio upstream that never answers initialize fails the agent's call
// when the connect timeout ends, with an error naming the upstream, and
// so do the agent's other calls waiting for that connection: not once
// the SDK has also closed the connection, which for a process that
// ignores the end of its input and SIGTERM takes twice its terminate
// duration more.
func TestStdioUpstreamHungAtInitialize(t *testing.T) {
	const connect, terminate = time.Second, time.Minute
	hung, kill := hungStdioUpstream(terminate)
	var started atomic.Int32
	transport := func(ctx context.Context) (mcp.Transport, error) {
		if started.Add(1) == 1 { // the catalogue's, which lists the tools
			return stdioUpstream(ctx)
		}
		return hung(ctx)
	}
	g := newGatewayTimed(t, false, 5*time.Second, []Upstream{{Name: "files", Transport: transport, ConnectTimeout: connect, CallTimeout: 20 * time.Second}})
	t.Cleanup(kill) // before the broker closes, which would wait for them
	cs := g.connect(t, nil)
	start := time.Now()
	errs := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "files__get_pages", Arguments: json.RawMessage(`{"workspace_id":"w"}`)})
			errs <- err
		}()
	}
	for range 2 {
		err := <-errs
		if want := `upstream "files" did not answer in time`; err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("call: %v, want %q", err, want)
		}
	}
	// Behaviour, not speed: the SDK's close would end connect+2*terminate
	// after the start; the margin is for a busy machine.
	if took := time.Since(start); took > connect+terminate/2 {
		t.Errorf("the calls failed after %v: connecting waited for the SDK to close the connection", took.Round(time.Millisecond))
	}
}
