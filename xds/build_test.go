package xds

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tracev3 "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	headermutationv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/header_mutation/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	"github.com/amgateway/amg/authz"
	"github.com/amgateway/amg/internal/config"
)

var update = flag.Bool("update", false, "rewrite testdata/out from the current builder")

// TestGolden pins the whole Envoy configuration for each gateway config in
// testdata/in: a change to what Envoy is told shows up as a diff to review.
func TestGolden(t *testing.T) {
	ins, err := filepath.Glob(filepath.Join("testdata", "in", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(ins) < 3 {
		t.Fatalf("found %d golden inputs, want at least 3", len(ins))
	}
	for _, in := range ins {
		name := strings.TrimSuffix(filepath.Base(in), ".yaml")
		t.Run(name, func(t *testing.T) {
			res := buildFile(t, in)
			if err := res.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			got, err := render(res)
			if err != nil {
				t.Fatal(err)
			}
			out := filepath.Join("testdata", "out", name+".yaml")
			if *update {
				if err := os.WriteFile(out, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(out)
			if err != nil {
				t.Fatalf("%v (run go test ./xds -update to create it)", err)
			}
			if diff := cmp.Diff(strings.Split(string(want), "\n"), strings.Split(string(got), "\n")); diff != "" {
				t.Errorf("%s differs (-want +got; go test ./xds -update to accept):\n%s", out, diff)
			}
		})
	}
}

// render is the golden form of res: protojson with field names as in the
// proto files, as YAML with sorted keys; resources keep their fixed order.
func render(res *Resources) ([]byte, error) {
	mo := protojson.MarshalOptions{UseProtoNames: true}
	var buf bytes.Buffer
	list := func(key string, ms []proto.Message) error {
		buf.WriteString(`"` + key + `":[`)
		for i, m := range ms {
			if i > 0 {
				buf.WriteByte(',')
			}
			b, err := mo.Marshal(m)
			if err != nil {
				return err
			}
			buf.Write(b)
		}
		buf.WriteByte(']')
		return nil
	}
	buf.WriteByte('{')
	if err := list("listeners", messages(res.Listeners)); err != nil {
		return nil, err
	}
	buf.WriteByte(',')
	if err := list("routes", messages(res.Routes)); err != nil {
		return nil, err
	}
	buf.WriteByte(',')
	if err := list("clusters", messages(res.Clusters)); err != nil {
		return nil, err
	}
	buf.WriteByte('}')
	return yaml.JSONToYAML(buf.Bytes())
}

func messages[M proto.Message](ms []M) []proto.Message {
	out := make([]proto.Message, len(ms))
	for i, m := range ms {
		out[i] = m
	}
	return out
}

func parseFile(t *testing.T, path string) *config.Config {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse(filepath.Base(path), data, nil)
	if err != nil {
		t.Fatalf("parse %s: %v", path, err)
	}
	return cfg
}

func buildFile(t *testing.T, path string) *Resources {
	t.Helper()
	res, err := Build(parseFile(t, path))
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	return res
}

func names[M interface{ GetName() string }](ms []M) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.GetName()
	}
	return out
}

func TestBuildNames(t *testing.T) {
	tests := []struct {
		in                          string
		listeners, routes, clusters []string
	}{
		{
			in:        "default",
			listeners: []string{ListenerAgent, ListenerEgress},
			routes:    []string{RouteAgent, RouteEgress},
			clusters:  []string{ClusterAuthz, ClusterBroker, "upstream_notion"},
		},
		{
			in:        "replicas",
			listeners: []string{ListenerAgent, ListenerEgress},
			routes:    []string{RouteAgent, RouteEgress},
			clusters:  []string{ClusterAuthz, ClusterBroker, ClusterTracing, "upstream_github", "upstream_lan", "upstream_notion"},
		},
		{
			in:        "no-egress",
			listeners: []string{ListenerAgent},
			routes:    []string{RouteAgent},
			clusters:  []string{ClusterAuthz, ClusterBroker, "upstream_local"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			res := buildFile(t, filepath.Join("testdata", "in", tt.in+".yaml"))
			if diff := cmp.Diff(tt.listeners, names(res.Listeners)); diff != "" {
				t.Errorf("listeners (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.routes, names(res.Routes)); diff != "" {
				t.Errorf("routes (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.clusters, names(res.Clusters)); diff != "" {
				t.Errorf("clusters (-want +got):\n%s", diff)
			}
		})
	}
}

// TestAgentFilters checks the security-relevant part of the agent
// listener: x-amg-* headers are dropped before ext_authz, which denies on
// any failure and sees the whole body as bytes.
func TestAgentFilters(t *testing.T) {
	cfg := config.Default()
	cfg.MaxBodyBytes = 12345
	res, err := Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	hcm, err := agentHCM(res)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{filterHeaderMutation, FilterExtAuthz, filterRouter}
	if diff := cmp.Diff(want, names(hcm.GetHttpFilters())); diff != "" {
		t.Fatalf("http filters (-want +got):\n%s", diff)
	}
	hm := &headermutationv3.HeaderMutation{}
	if err := hcm.GetHttpFilters()[0].GetTypedConfig().UnmarshalTo(hm); err != nil {
		t.Fatal(err)
	}
	muts := hm.GetMutations().GetRequestMutations()
	if len(muts) != 1 {
		t.Fatalf("header mutation has %d request mutations, want 1", len(muts))
	}
	m := muts[0].GetRemoveOnMatch().GetKeyMatcher()
	if m.GetPrefix() != AMGHeaderPrefix || !m.GetIgnoreCase() {
		t.Errorf("header mutation removes %v, want prefix %q ignoring case", m, AMGHeaderPrefix)
	}
	// Every header authz vouches for must be one the filter strips.
	for _, h := range []string{authz.HeaderAgent, authz.HeaderRole, authz.HeaderVerdict, authz.HeaderDecision, authz.HeaderDecisionID} {
		if !strings.HasPrefix(h, AMGHeaderPrefix) {
			t.Errorf("authz header %s does not start with %s, so an agent could forge it", h, AMGHeaderPrefix)
		}
	}

	ea, err := ExtAuthzConfig(res)
	if err != nil {
		t.Fatal(err)
	}
	body := ea.GetWithRequestBody()
	switch {
	case body.GetMaxRequestBytes() != 12346:
		t.Errorf("max_request_bytes = %d, want 12346: a byte more than max_body_bytes, so that a body cut at it is too large", body.GetMaxRequestBytes())
	case !body.GetAllowPartialMessage():
		t.Error("allow_partial_message is off: Envoy would answer an oversized body itself, unreadably and unaudited")
	case !body.GetPackAsBytes():
		t.Error("pack_as_bytes is off")
	case ea.GetFailureModeAllow():
		t.Error("failure_mode_allow is on")
	case ea.GetIncludePeerCertificate():
		t.Error("include_peer_certificate is on")
	case ea.GetGrpcService().GetEnvoyGrpc().GetClusterName() != ClusterAuthz:
		t.Errorf("ext_authz calls cluster %q", ea.GetGrpcService().GetEnvoyGrpc().GetClusterName())
	case ea.GetGrpcService().GetTimeout().AsDuration() != cfg.Envoy.AuthzTimeout:
		t.Errorf("ext_authz timeout = %v", ea.GetGrpcService().GetTimeout().AsDuration())
	}
	if d := hcm.GetStreamIdleTimeout().AsDuration(); d <= cfg.Envoy.RouteTimeout {
		t.Errorf("stream_idle_timeout %v would cut a request before its route timeout %v", d, cfg.Envoy.RouteTimeout)
	}
	// A slow client is bounded as on amg's own listener; the request
	// timeout ends once the request has gone to the broker, so it does
	// not bound a parked call.
	if d := hcm.GetRequestHeadersTimeout().AsDuration(); d != config.HeaderTimeout {
		t.Errorf("request_headers_timeout = %v, want %v", d, config.HeaderTimeout)
	}
	if d := hcm.GetRequestTimeout().AsDuration(); d != config.ReadTimeout {
		t.Errorf("request_timeout = %v, want %v", d, config.ReadTimeout)
	}
	if d := hcm.GetCommonHttpProtocolOptions().GetIdleTimeout().AsDuration(); d != config.IdleTimeout {
		t.Errorf("idle_timeout = %v, want %v", d, config.IdleTimeout)
	}
	h2 := hcm.GetHttp2ProtocolOptions()
	switch {
	case h2.GetInitialStreamWindowSize().GetValue() != 64<<10:
		t.Errorf("http2 initial_stream_window_size = %v, want 64 KiB", h2.GetInitialStreamWindowSize())
	case h2.GetInitialConnectionWindowSize().GetValue() != 1<<20:
		t.Errorf("http2 initial_connection_window_size = %v, want 1 MiB", h2.GetInitialConnectionWindowSize())
	}
}

// TestAgentListenerBuffersWholeBody checks that a body up to
// max_body_bytes reaches authz. With allow_partial_message, ext_authz
// does not raise the stream's buffer limit to max_request_bytes; the limit
// stays the listener's (Envoy's default: 1 MiB), and a body outgrowing it
// while ext_authz buffers gets Envoy's own 413, plain text, with no Check
// and no audit record.
func TestAgentListenerBuffersWholeBody(t *testing.T) {
	for _, maxBody := range []int{4 << 10, 1 << 20, 4 << 20} {
		t.Run(strconv.Itoa(maxBody), func(t *testing.T) {
			cfg := config.Default()
			cfg.MaxBodyBytes = maxBody
			res, err := Build(cfg)
			if err != nil {
				t.Fatal(err)
			}
			ea, err := ExtAuthzConfig(res)
			if err != nil {
				t.Fatal(err)
			}
			limit := agentBufferLimit(t, res)
			if limit <= uint64(maxBody) || limit < uint64(ea.GetWithRequestBody().GetMaxRequestBytes()) {
				t.Errorf("the agent listener buffers %d bytes of a request; max_body_bytes is %d and max_request_bytes %d: "+
					"a longer body than the listener buffers gets Envoy's 413 before any Check",
					limit, maxBody, ea.GetWithRequestBody().GetMaxRequestBytes())
			}
		})
	}
}

// TestAgentTLS checks the agent listener's TLS: none unless configured,
// since a listener without it carries bearer tokens in clear; when
// configured, the certificate files as Envoy finds them, the least version
// asked for, and ALPN, without which no agent could speak HTTP/2.
func TestAgentTLS(t *testing.T) {
	res, err := Build(config.Default())
	if err != nil {
		t.Fatal(err)
	}
	if ts := agentListener(t, res).GetFilterChains()[0].GetTransportSocket(); ts != nil {
		t.Errorf("the agent listener serves TLS unasked: %v", ts)
	}

	for _, tc := range []struct {
		min  string
		want tlsv3.TlsParameters_TlsProtocol
	}{{"", tlsv3.TlsParameters_TLSv1_2}, {"1.2", tlsv3.TlsParameters_TLSv1_2}, {"1.3", tlsv3.TlsParameters_TLSv1_3}} {
		cfg := config.Default()
		cfg.Envoy.TLS = &config.ListenTLS{CertFile: "/etc/envoy-tls/tls.crt", KeyFile: "/etc/envoy-tls/tls.key", MinVersion: tc.min}
		res, err := Build(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := res.Validate(); err != nil {
			t.Fatal(err)
		}
		ts := agentListener(t, res).GetFilterChains()[0].GetTransportSocket()
		ctx := &tlsv3.DownstreamTlsContext{}
		if ts.GetName() != transportSocketTLS || ts.GetTypedConfig().UnmarshalTo(ctx) != nil {
			t.Fatalf("min_version %q: transport socket %v, want a DownstreamTlsContext", tc.min, ts)
		}
		common := ctx.GetCommonTlsContext()
		certs := common.GetTlsCertificates()
		switch {
		case len(certs) != 1 || certs[0].GetCertificateChain().GetFilename() != "/etc/envoy-tls/tls.crt" ||
			certs[0].GetPrivateKey().GetFilename() != "/etc/envoy-tls/tls.key":
			t.Errorf("certificates %v, want the configured files", certs)
		case common.GetTlsParams().GetTlsMinimumProtocolVersion() != tc.want:
			t.Errorf("min_version %q: least version %v, want %v", tc.min, common.GetTlsParams().GetTlsMinimumProtocolVersion(), tc.want)
		case !slices.Equal(common.GetAlpnProtocols(), []string{"h2", "http/1.1"}):
			t.Errorf("ALPN %v, want h2 then http/1.1", common.GetAlpnProtocols())
		}
	}

	for _, bad := range []*config.ListenTLS{{CertFile: "/c", KeyFile: "/k", MinVersion: "1.1"}, {CertFile: "/c"}} {
		cfg := config.Default()
		cfg.Envoy.TLS = bad
		if _, err := Build(cfg); err == nil || !strings.Contains(err.Error(), "envoy.tls: ") {
			t.Errorf("Build with %+v: err = %v, want one about envoy.tls", bad, err)
		}
	}
}

// TestAgentConnectionBudget checks what one agent connection can make
// Envoy hold before authz has answered, so with no token: ext_authz
// buffers each stream's body, and Envoy returns the agent's flow-control
// window as the data moves there, so the windows do not bound it. It is
// at most the connection window, data taken in but not yet passed on,
// plus a body buffer per stream, and must stay within 32 MiB (README,
// "Envoy mode"), unless the least number of streams holds more.
func TestAgentConnectionBudget(t *testing.T) {
	const budget = 32 << 20
	for _, maxBody := range []int{4 << 10, 64 << 10, 1 << 20, 4 << 20, 15 << 20, 64 << 20} {
		t.Run(strconv.Itoa(maxBody), func(t *testing.T) {
			cfg := config.Default()
			cfg.MaxBodyBytes = maxBody
			res, err := Build(cfg)
			if err != nil {
				t.Fatal(err)
			}
			hcm, err := agentHCM(res)
			if err != nil {
				t.Fatal(err)
			}
			// A stream buffers at most the listener's buffer limit:
			// ext_authz holds a body until it has max_request_bytes of
			// it, and past the limit Envoy stops reading the stream, or
			// refuses it.
			perStream := agentBufferLimit(t, res)
			h2 := hcm.GetHttp2ProtocolOptions()
			streams := uint64(h2.GetMaxConcurrentStreams().GetValue())
			held := streams*perStream + uint64(h2.GetInitialConnectionWindowSize().GetValue())
			switch {
			case streams < 2:
				t.Errorf("%d concurrent streams: an agent's event stream would block its calls", streams)
			case streams > 100:
				t.Errorf("%d concurrent streams, over Envoy's advice for an edge proxy (100)", streams)
			case held > budget && streams > 2:
				t.Errorf("one connection can make Envoy hold %d bytes before authz answers (%d streams of %d bytes and a %d-byte window), over %d",
					held, streams, perStream, h2.GetInitialConnectionWindowSize().GetValue(), budget)
			}
		})
	}
}

// TestTracing checks that the agent listener traces to the collector
// cluster when one is configured, that the egress listener never does (its
// spans would hold upstream URLs with their queries), and that nothing
// traces without a collector.
func TestTracing(t *testing.T) {
	cfg := config.Default()
	cfg.Envoy.EgressListen = config.DefaultEgressListen
	res, err := Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, hcm := range hcms(t, res) {
		if hcm.GetTracing() != nil {
			t.Errorf("%s traces without a collector: %v", hcm.GetStatPrefix(), hcm.GetTracing())
		}
	}
	if slices.Contains(names(res.Clusters), ClusterTracing) {
		t.Error("a collector cluster without a collector")
	}

	cfg.Envoy.TracingAddress, cfg.Envoy.TracingSampling = "otel.example:4317", 12.5
	res, err = Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	got := hcms(t, res)
	if len(got) != 2 {
		t.Fatalf("%d connection managers, want the agent's and the egress one", len(got))
	}
	for _, hcm := range got {
		tr := hcm.GetTracing()
		if hcm.GetStatPrefix() == ListenerEgress {
			if tr != nil {
				t.Errorf("the egress listener traces: %v", tr)
			}
			continue
		}
		if tr.GetRandomSampling().GetValue() != 12.5 {
			t.Errorf("%s samples %v%%, want 12.5%%", hcm.GetStatPrefix(), tr.GetRandomSampling().GetValue())
		}
		if tr.GetProvider().GetName() != tracerOpenTelemetry {
			t.Errorf("%s tracer %q", hcm.GetStatPrefix(), tr.GetProvider().GetName())
		}
		otel := &tracev3.OpenTelemetryConfig{}
		if err := tr.GetProvider().GetTypedConfig().UnmarshalTo(otel); err != nil {
			t.Fatalf("%s: %v", hcm.GetStatPrefix(), err)
		}
		if c := otel.GetGrpcService().GetEnvoyGrpc().GetClusterName(); c != ClusterTracing || otel.GetServiceName() != TracingServiceName {
			t.Errorf("%s sends spans to cluster %q as %q", hcm.GetStatPrefix(), c, otel.GetServiceName())
		}
	}
	c := res.Clusters[slices.Index(names(res.Clusters), ClusterTracing)]
	addr := c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
	if addr.GetAddress() != "otel.example" || addr.GetPortValue() != 4317 || c.GetType() != clusterv3.Cluster_STRICT_DNS {
		t.Errorf("collector cluster reaches %v (%v)", addr, c.GetType())
	}
	opts := &httpv3.HttpProtocolOptions{}
	if err := c.GetTypedExtensionProtocolOptions()[httpProtocolOptions].UnmarshalTo(opts); err != nil || opts.GetExplicitHttpConfig().GetHttp2ProtocolOptions() == nil {
		t.Errorf("collector cluster does not speak HTTP/2, which OTLP/gRPC needs: %v %v", opts, err)
	}
}

func agentListener(t *testing.T, res *Resources) *listenerv3.Listener {
	t.Helper()
	for _, l := range res.Listeners {
		if l.GetName() == ListenerAgent {
			return l
		}
	}
	t.Fatalf("no listener %s", ListenerAgent)
	return nil
}

// agentBufferLimit is the bytes the agent listener buffers of a request:
// its per_connection_buffer_limit_bytes, Envoy's default of 1 MiB when
// unset.
func agentBufferLimit(t *testing.T, res *Resources) uint64 {
	t.Helper()
	if v := agentListener(t, res).GetPerConnectionBufferLimitBytes(); v != nil {
		return uint64(v.GetValue())
	}
	return 1 << 20
}

// hcms returns every listener's HTTP connection manager.
func hcms(t *testing.T, res *Resources) []*hcmv3.HttpConnectionManager {
	t.Helper()
	var out []*hcmv3.HttpConnectionManager
	for _, l := range res.Listeners {
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				hcm := &hcmv3.HttpConnectionManager{}
				if err := f.GetTypedConfig().UnmarshalTo(hcm); err != nil {
					t.Fatalf("listener %s: %v", l.GetName(), err)
				}
				out = append(out, hcm)
			}
		}
	}
	return out
}

func TestAgentRoutes(t *testing.T) {
	cfg := config.Default()
	res, err := Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	vhs := res.Routes[0].GetVirtualHosts()
	if len(vhs) != 1 || !slices.Equal(vhs[0].GetDomains(), []string{"*"}) {
		t.Fatalf("virtual hosts = %v, want one for *", vhs)
	}
	routes := vhs[0].GetRoutes()
	if len(routes) != 2 {
		t.Fatalf("%d routes, want 2", len(routes))
	}
	mcp := routes[0]
	if mcp.GetMatch().GetPath() != config.MCPPath {
		t.Errorf("first route matches %v, want path %s", mcp.GetMatch(), config.MCPPath)
	}
	ra := mcp.GetRoute()
	if ra.GetCluster() != ClusterBroker || ra.GetTimeout().AsDuration() != cfg.Envoy.RouteTimeout {
		t.Errorf("mcp route goes to %q with timeout %v", ra.GetCluster(), ra.GetTimeout().AsDuration())
	}
	if hp := ra.GetHashPolicy(); len(hp) != 1 || hp[0].GetHeader().GetHeaderName() != SessionHeader {
		t.Errorf("hash policy = %v, want header %s", hp, SessionHeader)
	}
	// No route-level removal: it would run after ext_authz and strip the
	// headers ext_authz set.
	for _, hs := range [][]string{vhs[0].GetRequestHeadersToRemove(), mcp.GetRequestHeadersToRemove()} {
		if len(hs) > 0 {
			t.Errorf("request_headers_to_remove = %v, want none", hs)
		}
	}
	if routes[1].GetDirectResponse().GetStatus() != 404 || routes[1].GetMatch().GetPrefix() != "/" {
		t.Errorf("fallback route = %v, want a 404 for everything", routes[1])
	}
	if _, ok := mcp.GetTypedPerFilterConfig()[FilterExtAuthz]; ok {
		t.Error("mcp route overrides ext_authz")
	}
	per := &extauthzv3.ExtAuthzPerRoute{}
	if err := routes[1].GetTypedPerFilterConfig()[FilterExtAuthz].UnmarshalTo(per); err != nil || !per.GetDisabled() {
		t.Errorf("fallback route ext_authz = %v, %v; want it disabled", per, err)
	}
	var broker *clusterv3.Cluster
	for _, c := range res.Clusters {
		if c.GetName() == ClusterBroker {
			broker = c
		}
	}
	if broker.GetLbPolicy() != clusterv3.Cluster_RING_HASH {
		t.Errorf("broker lb_policy = %v, want RING_HASH", broker.GetLbPolicy())
	}
	// The broker closes a connection idle for config.IdleTimeout; Envoy
	// must let it go first, or it may send a request on one being closed.
	opts := &httpv3.HttpProtocolOptions{}
	if err := broker.GetTypedExtensionProtocolOptions()[httpProtocolOptions].UnmarshalTo(opts); err != nil {
		t.Fatal(err)
	}
	if d := opts.GetCommonHttpProtocolOptions().GetIdleTimeout(); d == nil || d.AsDuration() <= 0 || d.AsDuration() >= config.IdleTimeout {
		t.Errorf("broker cluster idle_timeout = %v, want one shorter than the broker's %v", d, config.IdleTimeout)
	}
}

func TestUpstreamClusters(t *testing.T) {
	tests := []struct {
		url     string
		typ     clusterv3.Cluster_DiscoveryType
		host    string
		port    uint32
		sni     string // "" with tls: no SNI (IP address)
		tls     bool
		sanType tlsv3.SubjectAltNameMatcher_SanType
		rewrite string
		wantErr string
	}{
		{url: "https://mcp.example.com/mcp", typ: clusterv3.Cluster_STRICT_DNS, host: "mcp.example.com", port: 443,
			tls: true, sni: "mcp.example.com", sanType: tlsv3.SubjectAltNameMatcher_DNS, rewrite: "mcp.example.com"},
		{url: "https://mcp.example.com:8443/x?y=1", typ: clusterv3.Cluster_STRICT_DNS, host: "mcp.example.com", port: 8443,
			tls: true, sni: "mcp.example.com", sanType: tlsv3.SubjectAltNameMatcher_DNS, rewrite: "mcp.example.com:8443"},
		{url: "https://192.0.2.10/mcp", typ: clusterv3.Cluster_STATIC, host: "192.0.2.10", port: 443,
			tls: true, sanType: tlsv3.SubjectAltNameMatcher_IP_ADDRESS, rewrite: "192.0.2.10"},
		{url: "http://127.0.0.1:3000/mcp", typ: clusterv3.Cluster_STATIC, host: "127.0.0.1", port: 3000, rewrite: "127.0.0.1:3000"},
		{url: "http://[::1]/mcp", typ: clusterv3.Cluster_STATIC, host: "::1", port: 80, rewrite: "[::1]"},
		{url: "http://localhost:3000/mcp", typ: clusterv3.Cluster_STRICT_DNS, host: "localhost", port: 3000, rewrite: "localhost:3000"},
		{url: "ftp://example.com/", wantErr: "scheme"},
		{url: "https:///mcp", wantErr: "no host"},
		{url: "https://example.com:0/", wantErr: "port"},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			cfg := config.Default()
			cfg.Envoy.EgressListen = config.DefaultEgressListen
			cfg.Upstreams = map[string]*config.Upstream{"up": {
				Name: "up", URL: tt.url, ConnectTimeout: 3 * time.Second, CallTimeout: time.Minute,
			}}
			res, err := Build(cfg)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "upstreams.up.url") {
					t.Fatalf("Build err = %v, want one about upstreams.up.url and %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), tt.url) {
					t.Errorf("error %q quotes the URL, which may hold a secret", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := res.Validate(); err != nil {
				t.Fatal(err)
			}
			c := res.Clusters[len(res.Clusters)-1]
			if c.GetName() != "upstream_up" || c.GetType() != tt.typ {
				t.Errorf("cluster %s type %v, want upstream_up %v", c.GetName(), c.GetType(), tt.typ)
			}
			if c.GetConnectTimeout().AsDuration() != 3*time.Second {
				t.Errorf("connect_timeout = %v", c.GetConnectTimeout().AsDuration())
			}
			if c.GetCircuitBreakers() == nil || c.GetOutlierDetection() == nil {
				t.Error("no circuit breakers or outlier detection")
			}
			sa := c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
			if sa.GetAddress() != tt.host || sa.GetPortValue() != tt.port {
				t.Errorf("endpoint %s:%d, want %s:%d", sa.GetAddress(), sa.GetPortValue(), tt.host, tt.port)
			}
			ts := c.GetTransportSocket()
			if (ts != nil) != tt.tls {
				t.Fatalf("transport socket %v, want tls %v", ts, tt.tls)
			}
			if tt.tls {
				ctx := &tlsv3.UpstreamTlsContext{}
				if err := ts.GetTypedConfig().UnmarshalTo(ctx); err != nil {
					t.Fatal(err)
				}
				vc := ctx.GetCommonTlsContext().GetValidationContext()
				san := vc.GetMatchTypedSubjectAltNames()
				switch {
				case ctx.GetSni() != tt.sni:
					t.Errorf("sni = %q, want %q", ctx.GetSni(), tt.sni)
				case vc.GetTrustedCa().GetFilename() == "":
					t.Error("no trusted CA: Envoy would not verify the server")
				case len(san) != 1 || san[0].GetSanType() != tt.sanType || san[0].GetMatcher().GetExact() != tt.host:
					t.Errorf("SAN matchers = %v, want %v %s", san, tt.sanType, tt.host)
				}
			}
			var vh *routev3.VirtualHost
			for _, v := range res.Routes[1].GetVirtualHosts() {
				if slices.Contains(v.GetDomains(), EgressHost("up")) {
					vh = v
				}
			}
			ra := vh.GetRoutes()[0].GetRoute()
			if ra.GetCluster() != "upstream_up" || ra.GetHostRewriteLiteral() != tt.rewrite {
				t.Errorf("egress route to %q rewriting host to %q, want upstream_up, %q", ra.GetCluster(), ra.GetHostRewriteLiteral(), tt.rewrite)
			}
		})
	}
}

func TestBuildErrors(t *testing.T) {
	tests := []struct {
		name string
		edit func(*config.Config)
		want string
	}{
		{"listen on a host name", func(c *config.Config) { c.Envoy.Listen = "envoy.example:10000" }, "envoy.listen"},
		{"listen without port", func(c *config.Config) { c.Envoy.Listen = "0.0.0.0" }, "envoy.listen"},
		{"egress port out of range", func(c *config.Config) { c.Envoy.EgressListen = "127.0.0.1:70000" }, "envoy.egress_listen"},
		{"authz port 0", func(c *config.Config) { c.Envoy.AuthzAddress = "amg:0" }, "envoy.authz_address"},
		{"authz listener on a port picked at start", func(c *config.Config) { c.AuthzListen = "127.0.0.1:0" }, "authz_listen: 127.0.0.1:0 takes a free port"},
		{"broker listener on a port picked at start", func(c *config.Config) { c.BrokerListen = "127.0.0.1:0" }, "broker_listen: 127.0.0.1:0 takes a free port"},
		{"bad broker", func(c *config.Config) { c.Envoy.BrokerAddresses = []string{"a:1", "b"} }, "envoy.broker_addresses[1]"},
		{"body limit over 32 bits", func(c *config.Config) { c.MaxBodyBytes = 1 << 33 }, "max_body_bytes"},
		{"body limit a byte short of 32 bits", func(c *config.Config) { c.MaxBodyBytes = 1<<32 - 1 }, "max_body_bytes"},
		{"zero body limit", func(c *config.Config) { c.MaxBodyBytes = 0 }, "max_body_bytes: 0: must be at least 1"},
		{"trace collector without port", func(c *config.Config) { c.Envoy.TracingAddress = "jaeger" }, "envoy.tracing_address"},
		{"trace collector port 0", func(c *config.Config) { c.Envoy.TracingAddress = "jaeger:0" }, "envoy.tracing_address"},
		{"upstream host not UTF-8", func(c *config.Config) {
			c.Upstreams = map[string]*config.Upstream{"up": {URL: "https://%ff/mcp"}}
		}, "UTF-8"},
		{"route timeout within the approval wait", func(c *config.Config) { c.Envoy.RouteTimeout = c.ApprovalTTL + config.DefaultCallTimeout },
			"envoy.route_timeout: 16m0s is not longer than approvals.ttl + the longest upstream call timeout (16m0s)"},
		{"route timeout unset", func(c *config.Config) { c.Envoy.RouteTimeout = 0 }, "envoy.route_timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := config.Default()
			tt.edit(cfg)
			_, err := Build(cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Build err = %v, want one mentioning %q", err, tt.want)
			}
		})
	}
	if _, err := Build(nil); err == nil {
		t.Error("Build(nil) succeeded")
	}
}

// TestValidate checks that values Envoy would reject are caught, also
// inside typed configs, and that each error names its resource.
func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		edit func(*config.Config)
		want []string
	}{
		{"zero connect timeout", func(c *config.Config) {
			c.Upstreams = map[string]*config.Upstream{"up": {Name: "up", URL: "https://example.com/mcp"}}
		}, []string{"cluster upstream_up", "ConnectTimeout"}},
		{"negative authz timeout", func(c *config.Config) { c.Envoy.AuthzTimeout = -time.Second },
			[]string{"cluster amg_authz", "ConnectTimeout"}},
		{"sampling over 100", func(c *config.Config) { c.Envoy.TracingAddress, c.Envoy.TracingSampling = "jaeger:4317", 101 },
			[]string{"listener amg_agent", "RandomSampling"}},
		{"upstream name not UTF-8", func(c *config.Config) {
			c.Envoy.EgressListen = config.DefaultEgressListen
			c.Upstreams = map[string]*config.Upstream{"\xff": {URL: "http://127.0.0.1/mcp", ConnectTimeout: time.Second}}
		}, []string{"route configuration amg_egress_routes", "cluster upstream_\xff", "UTF-8"}},
		{"upstream names differing only in case", func(c *config.Config) {
			c.Envoy.EgressListen = config.DefaultEgressListen
			c.Upstreams = map[string]*config.Upstream{
				"notion": {URL: "https://mcp.notion.example/mcp", ConnectTimeout: time.Second},
				"Notion": {URL: "https://other.example/mcp", ConnectTimeout: time.Second},
			}
		}, []string{`route configuration amg_egress_routes: virtual host upstream_notion: domain "notion" is that of virtual host upstream_Notion once lowercased`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := config.Default()
			tt.edit(cfg)
			res, err := Build(cfg)
			if err != nil {
				t.Fatal(err)
			}
			err = res.Validate()
			if err == nil {
				t.Fatal("Validate succeeded")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate err = %v, want it to mention %q", err, w)
				}
			}
		})
	}
}

// TestListenerOverlap checks that the agent and egress listeners may not
// claim one address, both in Build, from the config, and in Validate, on
// resources however made: Envoy would keep only one of them, and with the
// egress one on the agent port, agents would reach the upstreams without
// ext_authz.
func TestListenerOverlap(t *testing.T) {
	tests := []struct {
		listen, egress string
		overlap        bool
	}{
		{"0.0.0.0:10000", "0.0.0.0:10000", true},
		{"127.0.0.1:10000", "127.0.0.1:10000", true},
		{"127.0.0.1:10000", "0.0.0.0:10000", true},
		{"0.0.0.0:10000", "127.0.0.1:10000", true},
		{":10000", "127.0.0.1:10000", true},
		{"[::]:10000", "127.0.0.1:10000", true},
		{"127.0.0.1:10000", "[::]:10000", true},
		{"localhost:10000", "127.0.0.1:10000", true},
		{"[::1]:10000", "[0:0:0:0:0:0:0:1]:10000", true},
		{"0.0.0.0:10000", "0.0.0.0:10001", false},
		{"127.0.0.1:10000", "127.0.0.2:10000", false},
		{"[::1]:10000", "127.0.0.1:10000", false},
		{"127.0.0.1:0", "127.0.0.1:0", false}, // each gets a port of its own
	}
	for _, tt := range tests {
		t.Run(tt.listen+" "+tt.egress, func(t *testing.T) {
			cfg := config.Default()
			cfg.Envoy.Listen, cfg.Envoy.EgressListen = tt.listen, tt.egress
			_, err := Build(cfg)
			switch {
			case !tt.overlap && err != nil:
				t.Errorf("Build: %v", err)
			case tt.overlap && (err == nil || !strings.Contains(err.Error(), "envoy.egress_listen: "+tt.egress+" overlaps envoy.listen ("+tt.listen+")")):
				t.Errorf("Build err = %v, want one naming envoy.egress_listen and envoy.listen", err)
			}

			// Resources with apart listeners, then the egress one moved.
			cfg.Envoy.EgressListen = "127.0.0.3:9"
			res, err := Build(cfg)
			if err != nil {
				t.Fatal(err)
			}
			addr, err := listenAddress(tt.egress)
			if err != nil {
				t.Fatal(err)
			}
			res.Listeners[1].Address = addr
			err = res.Validate()
			switch {
			case !tt.overlap && err != nil:
				t.Errorf("Validate: %v", err)
			case tt.overlap && (err == nil || !strings.Contains(err.Error(), "listener amg_egress: address") ||
				!strings.Contains(err.Error(), "overlaps that of listener amg_agent")):
				t.Errorf("Validate err = %v, want one naming listeners amg_egress and amg_agent", err)
			}
		})
	}
}

func TestExtAuthzConfigErrors(t *testing.T) {
	res, err := Build(config.Default())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		res  *Resources
	}{
		{"nil", nil},
		{"no listeners", &Resources{}},
		{"egress only", &Resources{Listeners: res.Listeners[1:]}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ExtAuthzConfig(tt.res); err == nil {
				t.Error("ExtAuthzConfig succeeded")
			}
		})
	}
}

func TestBuildIsDeterministic(t *testing.T) {
	cfg := parseFile(t, filepath.Join("testdata", "in", "replicas.yaml"))
	first, err := Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h1, err := first.hash()
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		again, err := Build(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if h, _ := again.hash(); h != h1 {
			t.Fatalf("hash %s then %s for the same config", h1, h)
		}
	}
}
