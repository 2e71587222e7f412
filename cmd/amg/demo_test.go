package main

import (
	"context"
	"regexp"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/amgateway/amg/internal/syncbuf"
)

// amg demo serves the built-in demo server to a real MCP client, and
// stops cleanly.
func TestDemo(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr syncbuf.Buffer
	exited := make(chan int, 1)
	go func() { exited <- run(ctx, []string{"demo", "--listen", "127.0.0.1:0"}, &stdout, &stderr) }()
	urlRE := regexp.MustCompile(`url=(\S+)`)
	var m []string
	for deadline := time.Now().Add(30 * time.Second); m == nil && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		m = urlRE.FindStringSubmatch(stderr.String())
	}
	if m == nil {
		t.Fatalf("demo did not start:\n%s", stderr.String())
	}
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "t", Version: "1"}, nil).Connect(ctx, &mcp.StreamableClientTransport{Endpoint: m[1]}, nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := cs.ListTools(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Tools) != 5 {
		t.Errorf("tools/list: %d tools, want the demo's 5", len(res.Tools))
	}
	cs.Close()
	cancel()
	select {
	case code := <-exited:
		if code != 0 {
			t.Errorf("demo exited with %d:\n%s", code, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("demo did not stop")
	}
}
