package gateway

import (
	"context"
	"encoding/json"
	"fmt"
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
