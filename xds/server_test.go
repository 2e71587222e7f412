package xds

import (
	"context"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	grpcstatus "google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/amgateway/amg/internal/config"
	"github.com/amgateway/amg/internal/syncbuf"
)

// hangGuard bounds each test's gRPC exchange; it is never expected to fire.
const hangGuard = 30 * time.Second

// startServer serves s on a loopback port until the test ends.
func startServer(t *testing.T, s *Server) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(lis) }()
	t.Cleanup(func() {
		s.Stop()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return lis.Addr().String()
}

// envoy is an ADS client that talks as Envoy does: one aggregated stream,
// the node on every request, each response ACKed with its version and
// nonce.
type envoy struct {
	t      *testing.T
	stream grpc.BidiStreamingClient[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]
	node   *corev3.Node
	// names are the resources subscribed to per type, repeated in ACKs.
	names map[string][]string
	// latest is the last response per type, which may have come in
	// while waiting for another type.
	latest map[string]*discoveryv3.DiscoveryResponse
}

func dialEnvoy(t *testing.T, addr, id string) *envoy {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	t.Cleanup(cancel)
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return &envoy{
		t:      t,
		stream: stream,
		node:   &corev3.Node{Id: id, Cluster: "amg-envoy"},
		names:  map[string][]string{},
		latest: map[string]*discoveryv3.DiscoveryResponse{},
	}
}

// subscribe asks for resources of typeURL (all of them when names is nil).
func (e *envoy) subscribe(typeURL string, names ...string) {
	e.t.Helper()
	e.names[typeURL] = names
	e.send(&discoveryv3.DiscoveryRequest{Node: e.node, TypeUrl: typeURL, ResourceNames: names})
}

func (e *envoy) send(req *discoveryv3.DiscoveryRequest) {
	e.t.Helper()
	if err := e.stream.Send(req); err != nil {
		e.t.Fatalf("send %s: %v", req.GetTypeUrl(), err)
	}
}

// recv returns the next response, already ACKed.
func (e *envoy) recv() *discoveryv3.DiscoveryResponse {
	e.t.Helper()
	resp, err := e.stream.Recv()
	if err != nil {
		e.t.Fatalf("recv: %v", err)
	}
	e.latest[resp.GetTypeUrl()] = resp
	e.send(&discoveryv3.DiscoveryRequest{
		Node:          e.node,
		TypeUrl:       resp.GetTypeUrl(),
		ResourceNames: e.names[resp.GetTypeUrl()],
		VersionInfo:   resp.GetVersionInfo(),
		ResponseNonce: resp.GetNonce(),
	})
	return resp
}

// recvType receives until a response of typeURL with version arrives,
// ACKing the others as Envoy would.
func (e *envoy) recvType(typeURL, version string) *discoveryv3.DiscoveryResponse {
	e.t.Helper()
	if resp := e.latest[typeURL]; resp.GetVersionInfo() == version {
		return resp
	}
	for {
		resp := e.recv()
		if resp.GetTypeUrl() == typeURL && resp.GetVersionInfo() == version {
			return resp
		}
		if resp.GetTypeUrl() == typeURL {
			e.t.Logf("skipping %s version %s, waiting for %s", typeURL, resp.GetVersionInfo(), version)
		}
	}
}

// decode unpacks every resource of resp into a new T.
func decode[T proto.Message](t *testing.T, resp *discoveryv3.DiscoveryResponse, newT func() T) []T {
	t.Helper()
	var out []T
	for _, a := range resp.GetResources() {
		m := newT()
		if err := a.UnmarshalTo(m); err != nil {
			t.Fatalf("decode %s: %v", a.GetTypeUrl(), err)
		}
		out = append(out, m)
	}
	return out
}

func sortedNames[M interface{ GetName() string }](ms []M) []string {
	return slices.Sorted(slices.Values(names(ms)))
}

func TestADS(t *testing.T) {
	cfg := parseFile(t, filepath.Join("testdata", "in", "default.yaml"))
	s := NewServer(nil)
	if err := s.Update(cfg); err != nil {
		t.Fatal(err)
	}
	v1 := s.Version()
	addr := startServer(t, s)
	e := dialEnvoy(t, addr, "envoy-1")

	// Envoy's order: clusters, then listeners, then the routes they name.
	e.subscribe(resource.ClusterType)
	cds := e.recvType(resource.ClusterType, v1)
	clusters := decode(t, cds, func() *clusterv3.Cluster { return &clusterv3.Cluster{} })
	if diff := cmp.Diff([]string{ClusterAuthz, ClusterBroker, "upstream_notion"}, sortedNames(clusters)); diff != "" {
		t.Fatalf("clusters (-want +got):\n%s", diff)
	}

	e.subscribe(resource.ListenerType)
	lds := e.recvType(resource.ListenerType, v1)
	listeners := decode(t, lds, func() *listenerv3.Listener { return &listenerv3.Listener{} })
	if diff := cmp.Diff([]string{ListenerAgent, ListenerEgress}, sortedNames(listeners)); diff != "" {
		t.Fatalf("listeners (-want +got):\n%s", diff)
	}
	ea, err := ExtAuthzConfig(&Resources{Listeners: listeners})
	if err != nil {
		t.Fatal(err)
	}
	body := ea.GetWithRequestBody()
	if !body.GetPackAsBytes() || !body.GetAllowPartialMessage() || ea.GetFailureModeAllow() ||
		body.GetMaxRequestBytes() != uint32(cfg.MaxBodyBytes)+1 {
		t.Errorf("ext_authz served as pack_as_bytes=%v allow_partial_message=%v failure_mode_allow=%v max_request_bytes=%d",
			body.GetPackAsBytes(), body.GetAllowPartialMessage(), ea.GetFailureModeAllow(), body.GetMaxRequestBytes())
	}

	e.subscribe(resource.RouteType, RouteAgent, RouteEgress)
	rds := e.recvType(resource.RouteType, v1)
	routes := decode(t, rds, func() *routev3.RouteConfiguration { return &routev3.RouteConfiguration{} })
	if diff := cmp.Diff([]string{RouteAgent, RouteEgress}, sortedNames(routes)); diff != "" {
		t.Fatalf("routes (-want +got):\n%s", diff)
	}
	for _, rc := range routes {
		if rc.GetName() != RouteAgent {
			continue
		}
		mcp := rc.GetVirtualHosts()[0].GetRoutes()[0]
		if mcp.GetMatch().GetPath() != config.MCPPath || mcp.GetRoute().GetCluster() != ClusterBroker {
			t.Errorf("agent route %v, want %s to %s", mcp, config.MCPPath, ClusterBroker)
		}
	}

	// One more upstream: every subscribed type gets the new version, and
	// the clusters include the new one.
	cfg.Upstreams["linear"] = &config.Upstream{Name: "linear", URL: "https://mcp.linear.example/mcp",
		ConnectTimeout: config.DefaultConnectTimeout, CallTimeout: config.DefaultCallTimeout}
	if err := s.Update(cfg); err != nil {
		t.Fatal(err)
	}
	v2 := s.Version()
	if v2 == v1 {
		t.Fatalf("version %s unchanged by Update", v2)
	}
	cds = e.recvType(resource.ClusterType, v2)
	clusters = decode(t, cds, func() *clusterv3.Cluster { return &clusterv3.Cluster{} })
	if diff := cmp.Diff([]string{ClusterAuthz, ClusterBroker, "upstream_linear", "upstream_notion"}, sortedNames(clusters)); diff != "" {
		t.Fatalf("clusters after update (-want +got):\n%s", diff)
	}
	rds = e.recvType(resource.RouteType, v2)
	routes = decode(t, rds, func() *routev3.RouteConfiguration { return &routev3.RouteConfiguration{} })
	for _, rc := range routes {
		if rc.GetName() == RouteEgress && len(rc.GetVirtualHosts()) != 2 {
			t.Errorf("egress routes after update have %d virtual hosts, want 2", len(rc.GetVirtualHosts()))
		}
	}

	// A second Envoy, whatever its node id, gets the same configuration.
	e2 := dialEnvoy(t, addr, "envoy-2")
	e2.subscribe(resource.ClusterType)
	cds2 := e2.recvType(resource.ClusterType, v2)
	if len(cds2.GetResources()) != len(cds.GetResources()) {
		t.Errorf("second envoy got %d clusters, first %d", len(cds2.GetResources()), len(cds.GetResources()))
	}
}

// TestUpdateRefusesInvalid checks that a bad configuration is refused with
// an error naming what failed, and the last good one stays served.
func TestUpdateRefusesInvalid(t *testing.T) {
	good := parseFile(t, filepath.Join("testdata", "in", "default.yaml"))
	s := NewServer(&Options{})
	if err := s.Update(good); err != nil {
		t.Fatal(err)
	}
	v1 := s.Version()

	tests := []struct {
		name  string
		edit  func(*config.Config)
		build func(*config.Config) (*Resources, error)
		want  []string
	}{
		{
			name: "sampling over 100 fails listener validation",
			edit: func(c *config.Config) { c.Envoy.TracingAddress, c.Envoy.TracingSampling = "jaeger:4317", 101 },
			want: []string{"invalid resources", "listener amg_agent", "RandomSampling"},
		},
		{
			name: "connect timeout zero fails cluster validation",
			edit: func(c *config.Config) { c.Upstreams["notion"].ConnectTimeout = 0 },
			want: []string{"invalid resources", "cluster upstream_notion", "ConnectTimeout"},
		},
		{
			name: "unbuildable",
			edit: func(c *config.Config) { c.Envoy.Listen = "envoy.example:10000" },
			want: []string{"envoy.listen"},
		},
		{
			name: "route configuration missing",
			build: func(c *config.Config) (*Resources, error) {
				res, err := Build(c)
				if err != nil {
					return nil, err
				}
				res.Routes = res.Routes[:1]
				return res, nil
			},
			want: []string{"inconsistent snapshot"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := parseFile(t, filepath.Join("testdata", "in", "default.yaml"))
			if tt.edit != nil {
				tt.edit(cfg)
			}
			s.build = Build
			if tt.build != nil {
				s.build = tt.build
			}
			err := s.Update(cfg)
			if err == nil {
				t.Fatal("Update succeeded")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Update err = %v, want it to mention %q", err, w)
				}
			}
			if v := s.Version(); v != v1 {
				t.Errorf("version %s after a refused Update, want %s", v, v1)
			}
		})
	}
	s.build = Build

	// An Envoy connecting now gets the last good version, in full.
	e := dialEnvoy(t, startServer(t, s), "envoy-late")
	e.subscribe(resource.ClusterType)
	cds := e.recvType(resource.ClusterType, v1)
	clusters := decode(t, cds, func() *clusterv3.Cluster { return &clusterv3.Cluster{} })
	for _, c := range clusters {
		if c.GetName() == "upstream_notion" && c.GetConnectTimeout().AsDuration() != config.DefaultConnectTimeout {
			t.Errorf("served upstream_notion connect_timeout %v, want the good %v", c.GetConnectTimeout().AsDuration(), config.DefaultConnectTimeout)
		}
	}
	e.subscribe(resource.RouteType, RouteAgent, RouteEgress)
	if rds := e.recvType(resource.RouteType, v1); len(rds.GetResources()) != 2 {
		t.Errorf("served %d route configurations, want 2", len(rds.GetResources()))
	}
}

func TestVersionsDiffer(t *testing.T) {
	s := NewServer(nil)
	if s.Version() != "" {
		t.Fatalf("version %q before any Update", s.Version())
	}
	cfg := config.Default()
	seen := map[string]bool{}
	for range 3 {
		if err := s.Update(cfg); err != nil {
			t.Fatal(err)
		}
		v := s.Version()
		if seen[v] {
			t.Fatalf("version %s reused", v)
		}
		seen[v] = true
	}
}

func TestStopWithoutServe(t *testing.T) {
	s := NewServer(nil)
	s.Stop()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	if err := s.Serve(lis); err != nil {
		t.Errorf("Serve after Stop = %v, want nil", err)
	}
}

// nackQuiet is how long TestNACKNotResent listens for a resend before it
// updates; a server that resends a rejected version does so at once.
const nackQuiet = 300 * time.Millisecond

// TestNACKNotResent checks that a version Envoy rejects is not pushed to it
// again: Envoy's NACK carries the version it last accepted, which differs
// from the snapshot's, and a cache left to itself answers it with the same
// rejected snapshot, and the next NACK likewise, without end. The
// rejection is logged once, and the next Update still reaches Envoy.
func TestNACKNotResent(t *testing.T) {
	tests := []struct {
		name string
		// accepted: Envoy accepted a first version and rejects the next
		// one; otherwise it rejects the first and holds none.
		accepted bool
	}{
		{name: "first version rejected"},
		{name: "update rejected", accepted: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			logs := &syncbuf.Buffer{}
			s := NewServer(&Options{Logger: slog.New(slog.NewTextHandler(logs, nil))})
			cfg := parseFile(t, filepath.Join("testdata", "in", "default.yaml"))
			if err := s.Update(cfg); err != nil {
				t.Fatal(err)
			}
			e := dialEnvoy(t, startServer(t, s), "envoy-1")
			e.subscribe(resource.ClusterType)

			// Responses arrive on resps, so that the test can stop
			// waiting for one.
			resps := make(chan *discoveryv3.DiscoveryResponse)
			done := make(chan struct{})
			t.Cleanup(func() { close(done) })
			go func() {
				defer close(resps)
				for {
					resp, err := e.stream.Recv()
					if err != nil {
						return
					}
					select {
					case resps <- resp:
					case <-done:
						return
					}
				}
			}()
			recv := func() *discoveryv3.DiscoveryResponse {
				t.Helper()
				select {
				case resp, ok := <-resps:
					if !ok {
						t.Fatal("stream ended")
					}
					return resp
				case <-time.After(hangGuard):
					t.Fatal("no response")
				}
				return nil
			}

			resp := recv()
			accepted := ""
			if tt.accepted {
				accepted = resp.GetVersionInfo()
				e.send(&discoveryv3.DiscoveryRequest{Node: e.node, TypeUrl: resource.ClusterType,
					VersionInfo: accepted, ResponseNonce: resp.GetNonce()})
				cfg.MaxBodyBytes++
				if err := s.Update(cfg); err != nil {
					t.Fatal(err)
				}
				resp = recv()
			}
			rejected := resp.GetVersionInfo()
			nack := func(resp *discoveryv3.DiscoveryResponse) {
				t.Helper()
				e.send(&discoveryv3.DiscoveryRequest{Node: e.node, TypeUrl: resource.ClusterType,
					VersionInfo: accepted, ResponseNonce: resp.GetNonce(),
					ErrorDetail: &status.Status{Code: int32(codes.InvalidArgument), Message: "rejected"}})
			}
			nack(resp)

			// Every response of the rejected version is rejected again,
			// as Envoy would; after a quiet spell, a new version.
			sent := 1
			quiet := time.After(nackQuiet)
			for resp.GetVersionInfo() == rejected {
				select {
				case resp = <-resps:
					if resp == nil {
						t.Fatal("stream ended")
					}
					if resp.GetVersionInfo() == rejected {
						sent++
						nack(resp)
					}
				case <-quiet:
					cfg.MaxBodyBytes++
					if err := s.Update(cfg); err != nil {
						t.Fatal(err)
					}
				case <-time.After(hangGuard):
					t.Fatal("the update after the rejection was not pushed")
				}
			}
			if sent != 1 {
				t.Errorf("rejected version %s was sent %d times, want once", rejected, sent)
			}
			if v := resp.GetVersionInfo(); v != s.Version() {
				t.Errorf("after the rejection got version %s, want the update's %s", v, s.Version())
			}
			if n := strings.Count(logs.String(), "envoy rejected config"); n != 1 {
				t.Errorf("rejection logged %d times, want once", n)
			}
			if !strings.Contains(logs.String(), "version="+rejected) {
				t.Errorf("rejection log does not name version %s:\n%s", rejected, logs)
			}
		})
	}
}

// A client of the xDS port needs no credential, so what it may send is
// bounded: a type the server does not have ends the stream before a watch
// keeps the request, the delta protocol is not served, and a request over
// the size limit is refused.
func TestUnservedRequestsEndTheStream(t *testing.T) {
	s := NewServer(nil)
	if err := s.Update(parseFile(t, filepath.Join("testdata", "in", "default.yaml"))); err != nil {
		t.Fatal(err)
	}
	addr := startServer(t, s)
	for _, tc := range []struct {
		name string
		req  *discoveryv3.DiscoveryRequest
		want codes.Code
	}{
		{"made-up type", &discoveryv3.DiscoveryRequest{TypeUrl: "type.googleapis.com/made.up.Thing"}, codes.InvalidArgument},
		{"endpoints", &discoveryv3.DiscoveryRequest{TypeUrl: resource.EndpointType}, codes.InvalidArgument},
		{"secrets", &discoveryv3.DiscoveryRequest{TypeUrl: resource.SecretType}, codes.InvalidArgument},
		{"too large", &discoveryv3.DiscoveryRequest{TypeUrl: resource.ClusterType, ResourceNames: []string{strings.Repeat("x", maxRequestBytes)}},
			codes.ResourceExhausted},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := dialEnvoy(t, addr, "envoy-1")
			tc.req.Node = e.node
			e.send(tc.req)
			_, err := e.stream.Recv()
			if got := grpcstatus.Code(err); got != tc.want {
				t.Errorf("Recv: %v, want %s", err, tc.want)
			}
		})
	}
	t.Run("served types still are", func(t *testing.T) {
		e := dialEnvoy(t, addr, "envoy-1")
		e.subscribe(resource.ClusterType)
		if resp := e.recv(); resp.GetTypeUrl() != resource.ClusterType {
			t.Errorf("response of type %q", resp.GetTypeUrl())
		}
	})
	t.Run("delta", func(t *testing.T) {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
		defer cancel()
		stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		stream.Send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "envoy-1"}, TypeUrl: resource.ClusterType})
		if _, err := stream.Recv(); grpcstatus.Code(err) != codes.Unimplemented {
			t.Errorf("delta Recv: %v, want Unimplemented", err)
		}
	})
}

// A rejection that answers no response of its stream is not an operator's
// error: anyone who reaches the port can send one, as large as a request
// may be, and as often as it likes.
func TestStrayRejectionsAreNotErrors(t *testing.T) {
	logs := &syncbuf.Buffer{}
	s := NewServer(&Options{Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err := s.Update(parseFile(t, filepath.Join("testdata", "in", "default.yaml"))); err != nil {
		t.Fatal(err)
	}
	e := dialEnvoy(t, startServer(t, s), strings.Repeat("n", 4096))
	e.subscribe(resource.ClusterType)
	e.recv()
	for range 20 {
		e.send(&discoveryv3.DiscoveryRequest{Node: e.node, TypeUrl: resource.ClusterType, ResponseNonce: "made-up",
			ErrorDetail: &status.Status{Code: int32(codes.InvalidArgument), Message: strings.Repeat("m", 64<<10)}})
	}
	// A request after them, answered, shows they were all handled.
	e.subscribe(resource.ListenerType)
	e.recvType(resource.ListenerType, s.Version())
	out := logs.String()
	if strings.Contains(out, "level=ERROR") {
		t.Errorf("stray rejections logged as errors:\n%.300s", out)
	}
	if n := strings.Count(out, "rejection of no current response"); n != 20 {
		t.Errorf("%d stray rejections logged at debug level, want 20", n)
	}
	if len(out) > 20*4*maxLoggedBytes {
		t.Errorf("the log grew by %d bytes for 20 stray rejections: the client's strings are not cut", len(out))
	}
}

// The cache logs the resource names a request gave when they do not
// cover the snapshot, and anyone who reaches the port can send a request
// naming a megabyte of them, as often as it likes: at the level amg
// serves at, nothing is logged; at debug, each line is cut.
func TestUncoveringRequestsAreNotWarnings(t *testing.T) {
	names := make([]string, 60000) // ~900 KiB, under the request limit
	for i := range names {
		names[i] = strings.Repeat("z", 12)
	}
	const reqs = 10
	for _, level := range []slog.Level{slog.LevelInfo, slog.LevelDebug} {
		t.Run(level.String(), func(t *testing.T) {
			logs := &syncbuf.Buffer{}
			s := NewServer(&Options{Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: level}))})
			if err := s.Update(parseFile(t, filepath.Join("testdata", "in", "default.yaml"))); err != nil {
				t.Fatal(err)
			}
			e := dialEnvoy(t, startServer(t, s), "envoy-1")
			for range reqs {
				e.send(&discoveryv3.DiscoveryRequest{Node: e.node, TypeUrl: resource.ClusterType, ResourceNames: names})
			}
			// A request after them, answered, shows they were all handled.
			e.subscribe(resource.ListenerType)
			e.recvType(resource.ListenerType, s.Version())
			out := logs.String()
			if strings.Contains(out, "level=WARN") {
				t.Errorf("a client's requests logged as warnings:\n%.300s", out)
			}
			if level == slog.LevelDebug && !strings.Contains(out, "not responding to request") {
				t.Errorf("the requests the cache does not answer are not logged at debug level:\n%.300s", out)
			}
			if len(out) > reqs*4*maxLoggedBytes {
				t.Errorf("the log grew by %d bytes for %d requests: the names they gave are not cut", len(out), reqs)
			}
		})
	}
}
