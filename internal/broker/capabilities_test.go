//lint:file-ignore SA1019 logging is deprecated from protocol 2026-07-28 on; the gateway serves the versions that have it

package broker

import (
	"context"
	"encoding/json"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/amgateway/amg/internal/policy"
)

// declaring is an in-memory upstream that declares exactly caps, with a
// tool and, if it declares resources, a resource.
func declaring(name string, caps *mcp.ServerCapabilities) Upstream {
	srv := mcp.NewServer(&mcp.Implementation{Name: name, Version: "1"}, &mcp.ServerOptions{Capabilities: caps})
	srv.AddTool(&mcp.Tool{Name: "get_pages", InputSchema: json.RawMessage(`{"type":"object"}`)}, func(context.Context, *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: name}}}, nil
	})
	if caps.Resources != nil {
		srv.AddResource(&mcp.Resource{URI: name + "://doc", Name: "doc"}, func(_ context.Context, req *mcp.ReadResourceRequest) (*mcp.ReadResourceResult, error) {
			return &mcp.ReadResourceResult{Contents: []*mcp.ResourceContents{{URI: req.Params.URI, Text: "doc"}}}, nil
		})
	}
	return Upstream{Name: name, Transport: func(ctx context.Context) (mcp.Transport, error) {
		client, server := mcp.NewInMemoryTransports()
		if _, err := srv.Connect(ctx, server, nil); err != nil {
			return nil, err
		}
		return client, nil
	}}
}

// usePolicy makes role, the gateway's token's, the only one of its policy.
func (g *gateway) usePolicy(t *testing.T, role string) {
	t.Helper()
	set, err := policy.Compile([]policy.File{{Name: "reader.yaml", Data: []byte(role)}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	g.policy.set.Store(set)
}

// An agent is told, at initialize or server/discover, what the upstreams
// its role sees declared, not all the gateway could relay.
func TestInitializeAnnouncesTheRolesUpstreams(t *testing.T) {
	tools := &mcp.ToolCapabilities{ListChanged: true}
	g := newGatewayTimed(t, false, 0, []Upstream{
		declaring("plain", &mcp.ServerCapabilities{Tools: &mcp.ToolCapabilities{}}),
		declaring("subs", &mcp.ServerCapabilities{Tools: &mcp.ToolCapabilities{}, Resources: &mcp.ResourceCapabilities{Subscribe: true}, Logging: &mcp.LoggingCapabilities{}}),
		declaring("docs", &mcp.ServerCapabilities{Tools: &mcp.ToolCapabilities{}, Resources: &mcp.ResourceCapabilities{}}),
	})
	tests := []struct {
		name, role string
		want       *mcp.ServerCapabilities
	}{
		{"only tools", "role: reader\nservers:\n  plain:\n    tools: [{name: get_pages}]\n",
			&mcp.ServerCapabilities{Tools: tools}},
		{"subscribe and logging", "role: reader\nservers:\n  subs:\n    resources: [\"subs://*\"]\n",
			&mcp.ServerCapabilities{Tools: tools, Resources: &mcp.ResourceCapabilities{ListChanged: true, Subscribe: true}, Logging: &mcp.LoggingCapabilities{}}},
		{"resources without subscribe or logging", "role: reader\nservers:\n  docs:\n    resources: [\"docs://*\"]\n",
			&mcp.ServerCapabilities{Tools: tools, Resources: &mcp.ResourceCapabilities{ListChanged: true}}},
		{"union", "role: reader\nservers:\n  docs:\n    resources: [\"docs://*\"]\n  subs:\n    tools: [{name: get_pages}]\n",
			&mcp.ServerCapabilities{Tools: tools, Resources: &mcp.ResourceCapabilities{ListChanged: true, Subscribe: true}, Logging: &mcp.LoggingCapabilities{}}},
		{"nothing granted", "role: reader\nservers: {}\n",
			&mcp.ServerCapabilities{Tools: tools}},
		{"shadow sees every upstream", "role: reader\nmode: shadow\nservers: {}\n",
			&mcp.ServerCapabilities{Tools: tools, Prompts: &mcp.PromptCapabilities{ListChanged: true},
				Resources: &mcp.ResourceCapabilities{ListChanged: true, Subscribe: true}, Completions: &mcp.CompletionCapabilities{}, Logging: &mcp.LoggingCapabilities{}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g.usePolicy(t, tt.role)
			if diff := cmp.Diff(tt.want, g.connect(t, nil).InitializeResult().Capabilities); diff != "" {
				t.Errorf("initialize announced (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.want, g.connectStateless(t, g.token, nil).InitializeResult().Capabilities); diff != "" {
				t.Errorf("server/discover announced (-want +got):\n%s", diff)
			}
		})
	}
}

// An upstream the gateway has not reached declared nothing yet; once
// reached, what it declared is announced, and stays so while it is gone.
func TestUnreachedUpstreamDeclaresNothingYet(t *testing.T) {
	subs := declaring("subs", &mcp.ServerCapabilities{Tools: &mcp.ToolCapabilities{}, Resources: &mcp.ResourceCapabilities{Subscribe: true}})
	reach := subs.Transport
	var down atomic.Bool
	down.Store(true)
	subs.Transport = func(ctx context.Context) (mcp.Transport, error) {
		if down.Load() {
			return nil, errors.New("connection refused")
		}
		return reach(ctx)
	}
	g := newGatewayTimed(t, false, 0, []Upstream{subs}, func(o *Options) { o.CatalogueRetry = 10 * time.Millisecond })
	g.usePolicy(t, "role: reader\nservers:\n  subs:\n    resources: [\"subs://*\"]\n")
	if got := g.connect(t, nil).InitializeResult().Capabilities; got.Resources != nil {
		t.Errorf("an upstream never reached announced resources %+v", got.Resources)
	}
	down.Store(false)
	eventually(t, "the upstream's catalogue", func() bool { return g.broker.Status()[1].Tools > 0 })
	want := &mcp.ResourceCapabilities{ListChanged: true, Subscribe: true}
	if got := g.connect(t, nil).InitializeResult().Capabilities; !cmp.Equal(got.Resources, want) {
		t.Errorf("reached upstream announced resources %+v, want %+v", got.Resources, want)
	}
	down.Store(true)
	u := g.broker.ups["subs"]
	u.mu.Lock()
	catalog := u.catalog
	u.mu.Unlock()
	catalog.Close()
	eventually(t, "the upstream gone", func() bool { return !g.broker.Status()[1].Connected })
	if got := g.connect(t, nil).InitializeResult().Capabilities; !cmp.Equal(got.Resources, want) {
		t.Errorf("upstream gone announced resources %+v, want %+v as when last reached", got.Resources, want)
	}
}

// What no upstream of the role declared, an agent that asks for anyway is
// answered at once with the upstream's JSON-RPC error: method not found.
func TestUnannouncedCapabilityIsRefused(t *testing.T) {
	g := newGatewayTimed(t, false, 0, []Upstream{
		declaring("docs", &mcp.ServerCapabilities{Tools: &mcp.ToolCapabilities{}, Resources: &mcp.ResourceCapabilities{}}),
	})
	g.usePolicy(t, "role: reader\nservers:\n  docs:\n    resources: [\"docs://*\"]\n")
	cs := g.connect(t, nil)
	if caps := cs.InitializeResult().Capabilities; caps.Resources.Subscribe || caps.Completions != nil {
		t.Fatalf("announced %+v, want neither subscriptions nor completions", caps)
	}
	ctx := context.Background()
	err := cs.Subscribe(ctx, &mcp.SubscribeParams{URI: "amg:docs:docs://doc"})
	if rpcErr := new(jsonrpc.Error); !errors.As(err, &rpcErr) || rpcErr.Code != jsonrpc.CodeMethodNotFound {
		t.Errorf("subscribe = %v, want method not found", err)
	}
	_, err = cs.Complete(ctx, &mcp.CompleteParams{Ref: &mcp.CompleteReference{Type: "ref/resource", URI: "amg:docs:docs://doc"},
		Argument: mcp.CompleteParamsArgument{Name: "x", Value: "y"}})
	if rpcErr := new(jsonrpc.Error); !errors.As(err, &rpcErr) || rpcErr.Code != jsonrpc.CodeMethodNotFound {
		t.Errorf("complete = %v, want method not found", err)
	}
}
