package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/modelcontextprotocol/go-sdk/mcp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/amgateway/amg/internal/config"
	"github.com/amgateway/amg/internal/demo"
	"github.com/amgateway/amg/internal/front"
	"github.com/amgateway/amg/xds"
)

// envoyFromXDS stands in for the Envoy that AMG's xDS server configures
// for cfg: it reaches authz and the broker at the addresses of the
// generated clusters, handles bodies as the generated ext_authz filter
// says, and serves only the routed path. The request it sends to Check is
// the one Envoy builds (front.CheckRequest); the test refuses a filter
// config asking for body handling that builder does not do.
func envoyFromXDS(t *testing.T, cfg *config.Config) http.Handler {
	t.Helper()
	res, err := xds.Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ea, err := xds.ExtAuthzConfig(res)
	if err != nil {
		t.Fatal(err)
	}
	body := ea.GetWithRequestBody()
	if body == nil || !body.GetPackAsBytes() || !body.GetAllowPartialMessage() || ea.GetFailureModeAllow() {
		t.Fatalf("the ext_authz filter asks for body handling the stand-in does not do: %v", ea)
	}
	authzCluster := ea.GetGrpcService().GetEnvoyGrpc().GetClusterName()
	conn, err := grpc.NewClient(clusterAddr(t, res, authzCluster), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	broker, _ := url.Parse("http://" + clusterAddr(t, res, xds.ClusterBroker))
	toBroker := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) { r.SetURL(broker) }, FlushInterval: -1}
	mux := http.NewServeMux()
	mux.Handle(config.MCPPath, front.New(grpcCheck{authv3.NewAuthorizationClient(conn)}, toBroker,
		&front.Options{MaxBodyBytes: int(body.GetMaxRequestBytes())}))
	return mux
}

// clusterAddr is the host:port of the first endpoint of the named cluster.
func clusterAddr(t *testing.T, res *xds.Resources, name string) string {
	t.Helper()
	for _, c := range res.Clusters {
		if c.GetName() != name {
			continue
		}
		for _, le := range lbEndpoints(c) {
			sa := le.GetEndpoint().GetAddress().GetSocketAddress()
			return net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue())))
		}
	}
	t.Fatalf("no cluster %q with an endpoint in %v", name, res.Clusters)
	return ""
}

func lbEndpoints(c *clusterv3.Cluster) (out []*endpointv3.LbEndpoint) {
	for _, e := range c.GetLoadAssignment().GetEndpoints() {
		out = append(out, e.GetLbEndpoints()...)
	}
	return out
}

// TestEnvoyConfigServesTheBrokerPathOnly checks what the generated route
// does with a path other than the MCP endpoint's: nothing reaches AMG.
func TestEnvoyConfigServesTheBrokerPathOnly(t *testing.T) {
	res, err := xds.Build(config.Default())
	if err != nil {
		t.Fatal(err)
	}
	var routes []string
	for _, rc := range res.Routes {
		for _, vh := range rc.GetVirtualHosts() {
			for _, r := range vh.GetRoutes() {
				routes = append(routes, fmt.Sprintf("%s path=%q cluster=%q direct=%d", rc.GetName(),
					r.GetMatch().GetPath(), r.GetRoute().GetCluster(), r.GetDirectResponse().GetStatus()))
			}
		}
	}
	want := []string{
		fmt.Sprintf("%s path=%q cluster=%q direct=0", xds.RouteAgent, config.MCPPath, xds.ClusterBroker),
		fmt.Sprintf("%s path=%q cluster=%q direct=404", xds.RouteAgent, "", ""),
	}
	if len(routes) < 2 || routes[0] != want[0] || routes[len(routes)-1] != want[1] {
		t.Errorf("routes = %q, want the agent's first %q and its last %q", routes, want[0], want[1])
	}
}

// With envoy.egress_address set, the broker reaches an upstream through
// Envoy's egress listener: plain HTTP to it, with the Host its routes
// match on. A stand-in for that listener checks the Host and forwards to
// the upstream, whose own host name does not resolve.
func TestUpstreamTrafficThroughEnvoyEgress(t *testing.T) {
	up := demo.NewServer(nil).MCP()
	upstream := httptest.NewServer(mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return up }, nil))
	t.Cleanup(upstream.Close)
	target, _ := url.Parse(upstream.URL)
	var mu sync.Mutex
	hosts := map[string]int{}
	egress := httptest.NewServer(&httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		mu.Lock()
		hosts[r.In.Host]++
		mu.Unlock()
		r.SetURL(target)
	}, FlushInterval: -1})
	t.Cleanup(egress.Close)

	ups := map[string]*config.Upstream{"notion": {Name: "notion", URL: "https://notion.invalid/mcp",
		ConnectTimeout: 5 * time.Second, CallTimeout: 30 * time.Second}}
	mcpURL, token := startGateway(t, ups, "reader", readerRole, func(c *config.Config) {
		c.Envoy.EgressListen, c.Envoy.EgressAddress = "127.0.0.1:10001", strings.TrimPrefix(egress.URL, "http://")
	})
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "agent", Version: "1"}, nil).Connect(context.Background(),
		&mcp.StreamableClientTransport{Endpoint: mcpURL, HTTPClient: &http.Client{Transport: bearer{token}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "notion__get_pages", Arguments: json.RawMessage(`{"workspace_id":"ws_abc123","limit":1}`)})
	if err != nil || res.IsError {
		t.Fatalf("call through the egress listener: %v %+v", err, res)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(hosts) != 1 || hosts[xds.EgressHost("notion")] == 0 {
		t.Errorf("the egress listener saw Host headers %v, want only %q", hosts, xds.EgressHost("notion"))
	}
}

const readerRole = `
role: reader
servers:
  notion:
    tools:
      - name: get_pages
        constraints:
          workspace_id: { eq: ws_abc123 }
          limit: { lte: 10, optional: true }
`

// A standalone gateway remembers the decisions its broker served in its
// memory, which a restart empties. A decision captured between Envoy and
// the broker and sent again after a restart, while still fresh, must be
// refused as it is before the restart, not served a second time.
func TestDecisionServedOnceAcrossARestart(t *testing.T) {
	cfg := loopbackConfig(t, "../../policies")
	serveSessionless(cfg)
	cfg.BrokerListen = "127.0.0.1:0"
	before, err := New(cfg, &Options{Builtins: Builtins{"demo": demo.NewServer(nil).MCP()}})
	if err != nil {
		t.Fatal(err)
	}
	closeBefore := sync.OnceValue(before.Close)
	defer closeBefore()
	if err := before.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	served := make(chan error, 1)
	go func() { served <- before.Serve(ctx) }()

	// Envoy, keeping a copy of the call it routes to the broker.
	conn, err := grpc.NewClient(before.AuthzAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	target, _ := url.Parse("http://" + before.BrokerAddr())
	proxy := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) { r.SetURL(target) }, FlushInterval: -1}
	var (
		mu     sync.Mutex
		header http.Header
		call   []byte
	)
	toBroker := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if strings.Contains(string(body), `"tools/call"`) {
			mu.Lock()
			header, call = r.Header.Clone(), body
			mu.Unlock()
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		proxy.ServeHTTP(w, r)
	})
	envoy := httptest.NewServer(front.New(grpcCheck{authv3.NewAuthorizationClient(conn)}, toBroker, nil))
	defer envoy.Close()

	token, _, err := before.IssueToken(context.Background(), "replayer", "notion_editor", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "agent", Version: "1"}, nil).Connect(context.Background(),
		&mcp.StreamableClientTransport{Endpoint: envoy.URL + config.MCPPath, HTTPClient: &http.Client{Transport: bearer{token}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "notion__get_pages", Arguments: json.RawMessage(`{"workspace_id":"ws_abc123"}`)})
	if err != nil || res.IsError {
		t.Fatalf("get_pages: %v %+v", err, res)
	}
	cs.Close()
	mu.Lock()
	defer mu.Unlock()
	if call == nil {
		t.Fatal("no tools/call reached the broker")
	}
	replay := func(broker string) (int, string) {
		req, _ := http.NewRequest(http.MethodPost, "http://"+broker+config.MCPPath, bytes.NewReader(call))
		req.Header = header.Clone()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		answer, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(answer)
	}
	if code, answer := replay(before.BrokerAddr()); code != http.StatusForbidden {
		t.Errorf("replay before the restart: %d %.200s, want 403", code, answer)
	}

	stop()
	if err := <-served; err != nil {
		t.Errorf("serve: %v", err)
	}
	closeBefore()
	after := serveForTest(t, cfg, nil)
	if code, answer := replay(after.BrokerAddr()); code != http.StatusForbidden || strings.Contains(answer, "pages") {
		t.Errorf("replay after the restart: %d %.200s, want 403", code, answer)
	}
}
