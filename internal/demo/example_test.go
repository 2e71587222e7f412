package demo_test

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/amgateway/amg/internal/demo"
)

// The demo server mounted at /mcp, as `amg serve` does, and called by an
// ordinary MCP client.
func ExampleServer_Handler() {
	mux := http.NewServeMux()
	mux.Handle("/mcp", demo.NewServer(nil).Handler())
	ts := httptest.NewServer(mux)
	defer ts.Close()

	ctx := context.Background()
	client := mcp.NewClient(&mcp.Implementation{Name: "example", Version: "v0.0.1"}, nil)
	cs, err := client.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: ts.URL + "/mcp"}, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer cs.Close()

	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "search", Arguments: map[string]any{
		"workspace_id": "ws_abc123",
		"query":        "",
		"filter":       map[string]any{"owner": "bob"},
	}})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.Content[0].(*mcp.TextContent).Text)
	// Output:
	// 2 pages in workspace ws_abc123 match "":
	// - pg_launch01a "Launch checklist" (owner bob; tags: launch, checklist)
	// - pg_pricing9k "Pricing experiments" (owner bob; tags: pricing, experiments)
}
