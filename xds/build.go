// Package xds is AMG's xDS control plane for Envoy mode: it turns the
// gateway configuration into the listeners, routes and clusters Envoy needs
// to front AMG (agent traffic checked by AMG's ext_authz, then routed to a
// broker replica; broker traffic to the upstream MCP servers), and serves
// them to every Envoy over ADS.
//
// Build is pure: the same config always yields the same resources, so the
// golden tests pin exactly what Envoy is told. Server adds the snapshot
// versioning, validation and gRPC serving.
package xds

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/url"
	"slices"
	"strconv"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	mutationv3 "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tracev3 "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	headermutationv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/header_mutation/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/amgateway/amg/internal/config"
)

// Resource names. Envoy's stats and config dumps show them, and the route
// configurations are fetched by name over RDS.
const (
	ListenerAgent  = "amg_agent"
	ListenerEgress = "amg_egress"
	RouteAgent     = "amg_agent_routes"
	RouteEgress    = "amg_egress_routes"
	ClusterAuthz   = "amg_authz"
	ClusterBroker  = "amg_broker"
	// ClusterTracing is the OpenTelemetry collector Envoy sends its spans
	// to, when envoy.tracing_address names one.
	ClusterTracing = "amg_tracing"
	// ClusterUpstreamPrefix + an upstream's name is that upstream's cluster.
	ClusterUpstreamPrefix = "upstream_"
)

// Envoy extension names, as the filter and extension registries know them.
const (
	filterHCM            = "envoy.filters.network.http_connection_manager"
	filterHeaderMutation = "envoy.filters.http.header_mutation"
	FilterExtAuthz       = "envoy.filters.http.ext_authz"
	filterRouter         = "envoy.filters.http.router"
	transportSocketTLS   = "envoy.transport_sockets.tls"
	tracerOpenTelemetry  = "envoy.tracers.opentelemetry"
	httpProtocolOptions  = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
)

// SessionHeader is the MCP session header the agent route hashes on, so
// that every request of one session reaches the same broker replica while
// the replica set is unchanged.
const SessionHeader = "mcp-session-id"

// AMGHeaderPrefix starts the headers ext_authz sets on allowed requests
// (agent, role, verdict, signed decision). Envoy removes every such header
// the agent sent before ext_authz runs.
const AMGHeaderPrefix = "x-amg-"

// TracingServiceName is the service.name of Envoy's spans, beside amg's
// own "amg".
const TracingServiceName = "amg-envoy"

// UpstreamCAFile is the CA bundle, on Envoy's host, that upstream server
// certificates are verified against: the Debian/Ubuntu location, which is
// also the one in the official Envoy images. Envoy verifies nothing when a
// TLS context names no trusted CA, and the config has no setting for it.
const UpstreamCAFile = "/etc/ssl/certs/ca-certificates.crt"

const (
	// timeoutSlack is added to the route timeout for the connection
	// manager's stream idle timeout, so that a request parked for
	// approval ends by the route's timeout, with a proper 504, rather
	// than by a stream reset.
	timeoutSlack = time.Minute
	// brokerConnectTimeout bounds connecting to a broker replica, which
	// is on Envoy's own network; tracingConnectTimeout to the collector.
	brokerConnectTimeout  = config.DefaultConnectTimeout
	tracingConnectTimeout = config.DefaultConnectTimeout
	// brokerIdleTimeout is how long Envoy keeps an idle connection to a
	// broker replica: well within the broker listener's own
	// config.IdleTimeout, so that Envoy never sends a request on a
	// connection the broker is closing (Envoy's default is an hour).
	brokerIdleTimeout = config.IdleTimeout / 2
)

// Circuit breaker thresholds. A request parked for approval holds a
// broker connection (HTTP/1.1) for up to the route timeout, so the
// broker's limits are well above Envoy's defaults of 1024; an upstream
// gets Envoy's defaults, written out so config dumps show them.
const (
	brokerMaxConnections     = 10000
	brokerMaxRequests        = 10000
	brokerMaxPendingRequests = 10000
	authzMaxRequests         = 10000
	authzMaxPendingRequests  = 10000
	upstreamMaxConnections   = 1024
	upstreamMaxRequests      = 1024
	upstreamMaxPending       = 1024
	upstreamMaxRetries       = 3
)

// HTTP/2 limits of the agent listener. The windows are Envoy's advice for
// an edge proxy (its defaults are 16 MiB and 24 MiB), but they do not bound
// what one connection makes Envoy hold: ext_authz buffers each request's
// body before the Check, and so before any token is checked, and Envoy
// gives the agent its window back as the data moves into that buffer. What
// a connection can pin, with no token, for up to config.ReadTimeout, is
// then a body buffer per stream plus the connection window (the data
// Envoy has taken in but not yet passed on). The stream limit is set so
// that this fits agentConnectionBudget: as many streams as fit, from
// agentMinConcurrentStreams (an event stream and a call: a body limit so
// large that two bodies exceed the budget exceeds it) to
// agentMaxConcurrentStreams (Envoy's edge advice; its default is 1024).
// The overload manager in Envoy's bootstrap (envoy/envoy.yaml) bounds the
// total over all connections.
const (
	agentConnectionBudget     = 32 << 20
	agentMinConcurrentStreams = 2
	agentMaxConcurrentStreams = 100
	agentStreamWindow         = 64 << 10
	agentConnectionWindow     = 1 << 20
)

// agentStreams is the agent listener's stream limit when each stream may
// buffer up to buf bytes of body.
func agentStreams(buf uint32) uint32 {
	n := (agentConnectionBudget - agentConnectionWindow) / uint64(max(buf, 1))
	return uint32(min(max(n, agentMinConcurrentStreams), agentMaxConcurrentStreams))
}

// Resources are what Envoy is configured with, each kind in a fixed order:
// listeners agent then egress, routes likewise, clusters authz, broker,
// the trace collector, then the upstreams by name.
type Resources struct {
	Listeners []*listenerv3.Listener
	Routes    []*routev3.RouteConfiguration
	Clusters  []*clusterv3.Cluster
}

// UpstreamCluster is the name of the cluster for the upstream named name.
func UpstreamCluster(name string) string { return ClusterUpstreamPrefix + name }

// EgressHost is the Host (authority) the broker sends, on requests to the
// egress listener, to reach the upstream named name. The egress routes
// match on it rather than on the upstream's own host because two upstreams
// may share a host; Envoy rewrites it to the upstream's real authority. A
// port after it is ignored.
func EgressHost(name string) string { return name }

// Build returns the Envoy resources for cfg. It fails for what Envoy
// cannot be told at all: an address that is not host:port, a listener on a
// host name, no broker, an upstream URL without a host, a body limit
// below 1 or over 32 bits; and for what would leave agents worse off than
// no Envoy: the egress listener on the agent listener's address, a route
// timeout that cuts calls short (see config.Config.LongestRequest). Other
// value ranges (a zero timeout) are left to Validate, which applies
// Envoy's own rules.
func Build(cfg *config.Config) (*Resources, error) {
	if cfg == nil {
		return nil, errors.New("build envoy config: nil config")
	}
	b := &builder{}
	res, err := b.build(cfg)
	if err == nil {
		err = b.err
	}
	if err != nil {
		return nil, fmt.Errorf("build envoy config: %w", err)
	}
	return res, nil
}

// builder keeps the first failure to encode a typed config, so that the
// many places that wrap one need not each return an error. Encoding fails
// only for a string that is not UTF-8, which a Config built in code might
// hold.
type builder struct {
	err error
}

func (b *builder) any(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		if b.err == nil {
			b.err = fmt.Errorf("encode %s: %w", m.ProtoReflect().Descriptor().FullName(), err)
		}
		return &anypb.Any{}
	}
	return a
}

// upstream is one upstream that gets a cluster.
type upstream struct {
	*config.Upstream
	name   string
	target upstreamTarget
}

func (b *builder) build(cfg *config.Config) (*Resources, error) {
	e := &cfg.Envoy
	res := &Resources{}

	// Sorted here rather than trusting cfg.Names, so that a Config built
	// in code yields the same order.
	var ups []upstream
	for _, name := range slices.Sorted(maps.Keys(cfg.Upstreams)) {
		u := cfg.Upstreams[name]
		if u == nil || u.URL == "" {
			continue // stdio and builtin upstreams run inside AMG
		}
		t, err := parseUpstreamURL(u.URL)
		if err != nil {
			// The URL itself is not quoted: it may carry a secret.
			return nil, fmt.Errorf("upstreams.%s.url: %w", name, err)
		}
		ups = append(ups, upstream{Upstream: u, name: name, target: t})
	}

	agent, err := b.agentListener(cfg)
	if err != nil {
		return nil, err
	}
	res.Listeners = append(res.Listeners, agent)
	res.Routes = append(res.Routes, b.agentRoutes(cfg))
	if e.EgressListen != "" {
		egress, err := b.egressListener(cfg)
		if err != nil {
			return nil, err
		}
		if overlap(agent.GetAddress(), egress.GetAddress()) {
			return nil, fmt.Errorf("envoy.egress_listen: %s overlaps envoy.listen (%s): Envoy would keep only one of the two listeners, "+
				"and with the egress one on the agent port, agents would reach the upstreams without ext_authz", e.EgressListen, e.Listen)
		}
		res.Listeners = append(res.Listeners, egress)
		res.Routes = append(res.Routes, egressRoutes(ups))
	}

	authz, err := b.authzCluster(cfg)
	if err != nil {
		return nil, err
	}
	broker, err := b.brokerCluster(cfg)
	if err != nil {
		return nil, err
	}
	res.Clusters = append(res.Clusters, authz, broker)
	if e.TracingAddress != "" {
		tracing, err := b.tracingCluster(e)
		if err != nil {
			return nil, err
		}
		res.Clusters = append(res.Clusters, tracing)
	}
	for _, u := range ups {
		res.Clusters = append(res.Clusters, b.upstreamCluster(u))
	}
	return res, nil
}

// agentListener is where agents connect: agent-sent x-amg-* headers are
// dropped, ext_authz checks the request with its body, and the router
// sends what is allowed to a broker replica.
func (b *builder) agentListener(cfg *config.Config) (*listenerv3.Listener, error) {
	e := &cfg.Envoy
	addr, err := listenAddress(e.Listen)
	if err != nil {
		return nil, fmt.Errorf("envoy.listen: %w", err)
	}
	// Envoy buffers one byte more than the limit (see bodyBuffer), so
	// Envoy's own rule, a positive max_request_bytes, cannot catch a zero
	// limit.
	switch {
	case cfg.MaxBodyBytes < 1:
		return nil, fmt.Errorf("max_body_bytes: %d: must be at least 1", cfg.MaxBodyBytes)
	case cfg.MaxBodyBytes > config.MaxEnvoyBodyBytes:
		return nil, fmt.Errorf("max_body_bytes: %d does not fit Envoy's 32-bit buffer limit", cfg.MaxBodyBytes)
	}
	// ext_authz sends a body once it has max_request_bytes of it, and
	// marks it partial only when it holds more than it sends: a body cut
	// exactly at the limit would reach authz looking whole, and might
	// parse. So the limit is a byte more than max_body_bytes, and a body
	// over max_body_bytes always reaches authz longer than it, to be
	// refused whatever the partial flag says.
	//
	// The listener's buffer limit is a request's too: with
	// allow_partial_message, ext_authz does not raise it to
	// max_request_bytes, and Envoy answers a body that outgrows it, while
	// ext_authz still buffers, with its own 413, plain text and never
	// Checked nor audited. Envoy's default, 1 MiB, would do that to every
	// body between 1 MiB and max_body_bytes, so it is max_request_bytes.
	// It is the body buffer per stream that agentStreams counts. It also
	// bounds what each stream's answer (to an allowed request) buffers for
	// a slow agent before Envoy stops reading from the broker.
	bodyBuffer := uint32(cfg.MaxBodyBytes) + 1

	// The route timeout counts the whole streamed response; zero would be
	// none at all.
	if longest := cfg.LongestRequest(); e.RouteTimeout <= longest {
		return nil, fmt.Errorf("envoy.route_timeout: %v is not longer than approvals.ttl + the longest upstream call timeout (%v): "+
			"Envoy would cut off calls approved late", e.RouteTimeout, longest)
	}
	// The removal must run before ext_authz, as its own filter: ext_authz
	// then sets these headers on allowed requests, and the broker trusts
	// them. A route's request_headers_to_remove is no substitute: it
	// matches exact names only, and the router applies it after ext_authz,
	// so it would strip the headers ext_authz set rather than the
	// agent's.
	strip := &headermutationv3.HeaderMutation{Mutations: &headermutationv3.Mutations{
		RequestMutations: []*mutationv3.HeaderMutation{{
			Action: &mutationv3.HeaderMutation_RemoveOnMatch_{RemoveOnMatch: &mutationv3.HeaderMutation_RemoveOnMatch{
				KeyMatcher: &matcherv3.StringMatcher{
					MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: AMGHeaderPrefix},
					IgnoreCase:   true,
				},
			}},
		}},
	}}
	authz := &extauthzv3.ExtAuthz{
		Services: &extauthzv3.ExtAuthz_GrpcService{GrpcService: &corev3.GrpcService{
			TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: ClusterAuthz}},
			Timeout:         durationpb.New(e.AuthzTimeout),
		}},
		TransportApiVersion: corev3.ApiVersion_V3,
		// Every failure is a deny: AMG unreachable must not mean open.
		FailureModeAllow: false,
		// AMG decides on the JSON-RPC body, so it needs all of it, and
		// bytes keep it exactly as the agent sent it. A body over the
		// limit reaches authz cut (see bodyBuffer), and authz refuses it
		// with a JSON-RPC error the agent can read, and audits it
		// (Envoy's own 413 would be plain text, and unrecorded).
		WithRequestBody: &extauthzv3.BufferSettings{
			MaxRequestBytes:     bodyBuffer,
			AllowPartialMessage: true,
			PackAsBytes:         true,
		},
		IncludePeerCertificate: false,
	}
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: ListenerAgent,
		CodecType:  hcmv3.HttpConnectionManager_AUTO,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource:    adsSource(),
			RouteConfigName: RouteAgent,
		}},
		// Normalized so that the exact /mcp match sees the path the
		// broker will.
		NormalizePath: wrapperspb.Bool(true),
		MergeSlashes:  true,
		// A call may wait RouteTimeout for a human's approval, and an
		// event stream stay quiet as long, with no bytes moving; Envoy's
		// 5 minute default would reset them.
		StreamIdleTimeout: durationpb.New(e.RouteTimeout + timeoutSlack),
		// The request itself is bounded as on amg's own listener, so
		// that a client trickling its headers or body, before any
		// Check, cannot hold a stream and the body ext_authz buffers.
		// This cannot cut a parked call: Envoy disarms request_timeout
		// once the last byte of the request has gone upstream, and
		// ext_authz holds the request until it has the whole body, so a
		// call reaches the broker, where it waits for approval, only
		// complete. A GET's event stream has no body to wait for.
		RequestHeadersTimeout: durationpb.New(config.HeaderTimeout),
		RequestTimeout:        durationpb.New(config.ReadTimeout),
		CommonHttpProtocolOptions: &corev3.HttpProtocolOptions{
			IdleTimeout: durationpb.New(config.IdleTimeout),
		},
		Http2ProtocolOptions: &corev3.Http2ProtocolOptions{
			MaxConcurrentStreams:        wrapperspb.UInt32(agentStreams(bodyBuffer)),
			InitialStreamWindowSize:     wrapperspb.UInt32(agentStreamWindow),
			InitialConnectionWindowSize: wrapperspb.UInt32(agentConnectionWindow),
		},
		Tracing: b.tracing(e),
	}
	hcm.HttpFilters = []*hcmv3.HttpFilter{
		b.httpFilter(filterHeaderMutation, strip),
		b.httpFilter(FilterExtAuthz, authz),
		b.httpFilter(filterRouter, &routerv3.Router{}),
	}
	l := b.listener(ListenerAgent, addr, hcm)
	l.PerConnectionBufferLimitBytes = wrapperspb.UInt32(bodyBuffer)
	if e.TLS != nil {
		ts, err := b.downstreamTLS(e.TLS)
		if err != nil {
			return nil, fmt.Errorf("envoy.tls: %w", err)
		}
		l.FilterChains[0].TransportSocket = ts
	}
	return l, nil
}

// downstreamTLS has the agent listener serve TLS with the certificate
// files on Envoy's host, which Envoy reads when it takes the listener.
// ALPN offers HTTP/2 before HTTP/1.1, as the connection manager speaks
// either.
func (b *builder) downstreamTLS(t *config.ListenTLS) (*corev3.TransportSocket, error) {
	versions := map[string]tlsv3.TlsParameters_TlsProtocol{"": tlsv3.TlsParameters_TLSv1_2,
		"1.2": tlsv3.TlsParameters_TLSv1_2, "1.3": tlsv3.TlsParameters_TLSv1_3}
	least, ok := versions[t.MinVersion]
	switch {
	case !ok:
		return nil, fmt.Errorf("min_version %q is not 1.2 or 1.3", t.MinVersion)
	case t.CertFile == "" || t.KeyFile == "":
		return nil, errors.New("needs cert_file and key_file")
	}
	ctx := &tlsv3.DownstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
		TlsParams: &tlsv3.TlsParameters{TlsMinimumProtocolVersion: least},
		TlsCertificates: []*tlsv3.TlsCertificate{{
			CertificateChain: &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: t.CertFile}},
			PrivateKey:       &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: t.KeyFile}},
		}},
		AlpnProtocols: []string{"h2", "http/1.1"},
	}}
	return &corev3.TransportSocket{
		Name:       transportSocketTLS,
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: b.any(ctx)},
	}, nil
}

// agentRoutes sends the MCP endpoint, and only it, to the broker. There is
// deliberately no request_headers_to_remove here: the router applies it
// after ext_authz, so it would strip the x-amg-* headers ext_authz set
// (see agentListener for the removal that runs first).
func (b *builder) agentRoutes(cfg *config.Config) *routev3.RouteConfiguration {
	return &routev3.RouteConfiguration{
		Name: RouteAgent,
		VirtualHosts: []*routev3.VirtualHost{{
			Name:    ListenerAgent,
			Domains: []string{"*"},
			Routes: []*routev3.Route{
				{
					Name:  "mcp",
					Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: config.MCPPath}},
					Action: &routev3.Route_Route{Route: &routev3.RouteAction{
						ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: ClusterBroker},
						Timeout:          durationpb.New(cfg.Envoy.RouteTimeout),
						// Requests without the header (initialize) go
						// to any replica.
						HashPolicy: []*routev3.RouteAction_HashPolicy{{
							PolicySpecifier: &routev3.RouteAction_HashPolicy_Header_{Header: &routev3.RouteAction_HashPolicy_Header{
								HeaderName: SessionHeader,
							}},
						}},
					}},
				},
				{
					Name:   "not_found",
					Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
					Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: 404}},
					// Nothing here reaches the broker, so scanners and
					// health probes need not cost a Check and an audit
					// record each.
					TypedPerFilterConfig: map[string]*anypb.Any{FilterExtAuthz: b.any(&extauthzv3.ExtAuthzPerRoute{
						Override: &extauthzv3.ExtAuthzPerRoute_Disabled{Disabled: true},
					})},
				},
			},
		}},
	}
}

// egressListener lets the broker reach the upstreams through Envoy, with
// Envoy's TLS, circuit breaking and outlier detection. It has no ext_authz:
// only the broker, on Envoy's private side, is meant to reach it.
func (b *builder) egressListener(cfg *config.Config) (*listenerv3.Listener, error) {
	e := &cfg.Envoy
	addr, err := listenAddress(e.EgressListen)
	if err != nil {
		return nil, fmt.Errorf("envoy.egress_listen: %w", err)
	}
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: ListenerEgress,
		CodecType:  hcmv3.HttpConnectionManager_AUTO,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource:    adsSource(),
			RouteConfigName: RouteEgress,
		}},
		// The broker may address the egress listener as name:port.
		StripPortMode: &hcmv3.HttpConnectionManager_StripAnyHostPort{StripAnyHostPort: true},
		// An upstream's event stream can be quiet for as long as an agent
		// request can wait.
		StreamIdleTimeout: durationpb.New(e.RouteTimeout + timeoutSlack),
		// No tracing here: Envoy's spans record the URL with its query,
		// where an upstream may take a credential. The broker's client
		// spans cover these calls, with query values redacted.
	}
	hcm.HttpFilters = []*hcmv3.HttpFilter{b.httpFilter(filterRouter, &routerv3.Router{})}
	return b.listener(ListenerEgress, addr, hcm), nil
}

// egressRoutes has one virtual host per upstream, matched by EgressHost.
// The path is passed through unchanged and the authority rewritten to the
// upstream's, so a broker request differs from a direct one only in where
// it connects to. Routes have no timeout: a server's event stream may stay
// open indefinitely, and the broker, which knows each call's deadline,
// enforces it.
func egressRoutes(ups []upstream) *routev3.RouteConfiguration {
	rc := &routev3.RouteConfiguration{Name: RouteEgress}
	for _, u := range ups {
		rc.VirtualHosts = append(rc.VirtualHosts, &routev3.VirtualHost{
			Name:    UpstreamCluster(u.name),
			Domains: []string{EgressHost(u.name)},
			Routes: []*routev3.Route{{
				Name:  UpstreamCluster(u.name),
				Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{
					ClusterSpecifier:     &routev3.RouteAction_Cluster{Cluster: UpstreamCluster(u.name)},
					HostRewriteSpecifier: &routev3.RouteAction_HostRewriteLiteral{HostRewriteLiteral: u.target.authority},
					Timeout:              durationpb.New(0),
				}},
			}},
		})
	}
	return rc
}

// authzCluster reaches ext_authz at envoy.authz_address, or where
// authz_listen listens.
func (b *builder) authzCluster(cfg *config.Config) (*clusterv3.Cluster, error) {
	e := &cfg.Envoy
	addr, err := cfg.EnvoyAuthzAddress()
	if err != nil {
		return nil, fmt.Errorf("authz_listen: %w", err)
	}
	ep, err := endpoint(addr)
	if err != nil {
		return nil, fmt.Errorf("envoy.authz_address: %w", err)
	}
	c := &clusterv3.Cluster{
		Name: ClusterAuthz,
		// A connection slower than a whole Check is of no use.
		ConnectTimeout: durationpb.New(e.AuthzTimeout),
		// Every agent request waits on a Check; Envoy's default limits
		// would deny requests (failure_mode_allow is off) under load.
		CircuitBreakers: &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
			MaxRequests:        wrapperspb.UInt32(authzMaxRequests),
			MaxPendingRequests: wrapperspb.UInt32(authzMaxPendingRequests),
		}}},
	}
	if err := b.setEndpoints(c, []hostPort{ep}, http2Options()); err != nil {
		return nil, fmt.Errorf("envoy.authz_address: %w", err)
	}
	return c, nil
}

// tracing has the agent listener trace its requests to the collector, or
// is nil when none is configured. Envoy continues the agent's traceparent
// and passes its own span on, to the Check (amg's decision spans join it)
// and to the broker. Its spans carry the method, URL, status and user
// agent, never a header or a body.
func (b *builder) tracing(e *config.Envoy) *hcmv3.HttpConnectionManager_Tracing {
	if e.TracingAddress == "" {
		return nil
	}
	return &hcmv3.HttpConnectionManager_Tracing{
		RandomSampling: &typev3.Percent{Value: e.TracingSampling},
		Provider: &tracev3.Tracing_Http{
			Name: tracerOpenTelemetry,
			ConfigType: &tracev3.Tracing_Http_TypedConfig{TypedConfig: b.any(&tracev3.OpenTelemetryConfig{
				GrpcService: &corev3.GrpcService{
					TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: ClusterTracing}},
				},
				ServiceName: TracingServiceName,
			})},
		},
	}
}

// tracingCluster reaches the collector's OTLP/gRPC receiver.
func (b *builder) tracingCluster(e *config.Envoy) (*clusterv3.Cluster, error) {
	ep, err := endpoint(e.TracingAddress)
	if err != nil {
		return nil, fmt.Errorf("envoy.tracing_address: %w", err)
	}
	c := &clusterv3.Cluster{Name: ClusterTracing, ConnectTimeout: durationpb.New(tracingConnectTimeout)}
	if err := b.setEndpoints(c, []hostPort{ep}, http2Options()); err != nil {
		return nil, fmt.Errorf("envoy.tracing_address: %w", err)
	}
	return c, nil
}

// brokerCluster reaches the brokers at envoy.broker_addresses, or where
// broker_listen listens.
func (b *builder) brokerCluster(cfg *config.Config) (*clusterv3.Cluster, error) {
	addrs, err := cfg.EnvoyBrokerAddresses()
	if err != nil {
		return nil, fmt.Errorf("broker_listen: %w", err)
	}
	eps := make([]hostPort, 0, len(addrs))
	for i, a := range addrs {
		ep, err := endpoint(a)
		if err != nil {
			return nil, fmt.Errorf("envoy.broker_addresses[%d]: %w", i, err)
		}
		eps = append(eps, ep)
	}
	c := &clusterv3.Cluster{
		Name:           ClusterBroker,
		ConnectTimeout: durationpb.New(brokerConnectTimeout),
		// Consistent hashing on the session header (see agentRoutes):
		// adding or removing a replica moves only its share of sessions.
		LbPolicy: clusterv3.Cluster_RING_HASH,
		CircuitBreakers: &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
			MaxConnections:     wrapperspb.UInt32(brokerMaxConnections),
			MaxRequests:        wrapperspb.UInt32(brokerMaxRequests),
			MaxPendingRequests: wrapperspb.UInt32(brokerMaxPendingRequests),
		}}},
	}
	opts := http1Options()
	opts.CommonHttpProtocolOptions = &corev3.HttpProtocolOptions{IdleTimeout: durationpb.New(brokerIdleTimeout)}
	if err := b.setEndpoints(c, eps, opts); err != nil {
		return nil, fmt.Errorf("envoy.broker_addresses: %w", err)
	}
	return c, nil
}

// upstreamCluster reaches one MCP Streamable HTTP server. Its HTTP/1.1
// works with every server; TLS verifies the server's certificate against
// UpstreamCAFile and its name against the URL's host.
func (b *builder) upstreamCluster(u upstream) *clusterv3.Cluster {
	t := u.target
	c := &clusterv3.Cluster{
		Name:           UpstreamCluster(u.name),
		ConnectTimeout: durationpb.New(u.ConnectTimeout),
		CircuitBreakers: &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
			MaxConnections:     wrapperspb.UInt32(upstreamMaxConnections),
			MaxRequests:        wrapperspb.UInt32(upstreamMaxRequests),
			MaxPendingRequests: wrapperspb.UInt32(upstreamMaxPending),
			MaxRetries:         wrapperspb.UInt32(upstreamMaxRetries),
		}}},
		// Only gateway failures (connect errors, 502, 503, 504) eject a
		// host: a 500 is one tool's failure, not a dead server. Should
		// every host be ejected, Envoy's panic threshold still routes to
		// them.
		OutlierDetection: &clusterv3.OutlierDetection{
			ConsecutiveGatewayFailure:          wrapperspb.UInt32(5),
			EnforcingConsecutiveGatewayFailure: wrapperspb.UInt32(100),
			EnforcingConsecutive_5Xx:           wrapperspb.UInt32(0),
			Interval:                           durationpb.New(10 * time.Second),
			BaseEjectionTime:                   durationpb.New(30 * time.Second),
			MaxEjectionPercent:                 wrapperspb.UInt32(100),
		},
	}
	// parseUpstreamURL has checked the port; setEndpoints cannot fail on it.
	_ = b.setEndpoints(c, []hostPort{t.hostPort}, http1Options())
	if t.tls {
		ctx := &tlsv3.UpstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
			ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
				TrustedCa: &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: UpstreamCAFile}},
				// Envoy checks the chain only, not the name, unless told.
				MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{sanMatcher(t.host)},
			}},
		}}
		// SNI carries a host name, never an IP address (RFC 6066).
		if net.ParseIP(t.host) == nil {
			ctx.Sni = t.host
		}
		c.TransportSocket = &corev3.TransportSocket{
			Name:       transportSocketTLS,
			ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: b.any(ctx)},
		}
	}
	return c
}

func sanMatcher(host string) *tlsv3.SubjectAltNameMatcher {
	m := &tlsv3.SubjectAltNameMatcher{
		SanType: tlsv3.SubjectAltNameMatcher_DNS,
		// Envoy matches an exact DNS name with wildcard certificate rules.
		Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: host}},
	}
	if net.ParseIP(host) != nil {
		m.SanType = tlsv3.SubjectAltNameMatcher_IP_ADDRESS
	}
	return m
}

// http2Options is for gRPC services, which need HTTP/2.
func http2Options() *httpv3.HttpProtocolOptions {
	return &httpv3.HttpProtocolOptions{
		UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}},
		}},
	}
}

func http1Options() *httpv3.HttpProtocolOptions {
	return &httpv3.HttpProtocolOptions{
		UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions{HttpProtocolOptions: &corev3.Http1ProtocolOptions{}},
		}},
	}
}

// setEndpoints gives c its endpoints, its discovery type and its HTTP
// protocol options. DNS names are kept as names (STRICT_DNS), so Envoy
// follows DNS changes such as a container network's; a cluster of IP
// literals only is STATIC.
func (b *builder) setEndpoints(c *clusterv3.Cluster, eps []hostPort, opts *httpv3.HttpProtocolOptions) error {
	typ := clusterv3.Cluster_STATIC
	lbs := make([]*endpointv3.LbEndpoint, 0, len(eps))
	for _, ep := range eps {
		if ep.port == 0 {
			return fmt.Errorf("%s: port 0 cannot be connected to", net.JoinHostPort(ep.host, "0"))
		}
		if net.ParseIP(ep.host) == nil {
			typ = clusterv3.Cluster_STRICT_DNS
		}
		lbs = append(lbs, &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Address: socketAddress(ep.host, ep.port),
		}}})
	}
	c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: typ}
	if typ == clusterv3.Cluster_STRICT_DNS {
		// Container networks and most resolvers answer A records; AUTO
		// would try AAAA first and fail where IPv6 is not routed.
		c.DnsLookupFamily = clusterv3.Cluster_V4_PREFERRED
	}
	c.LoadAssignment = &endpointv3.ClusterLoadAssignment{
		ClusterName: c.Name,
		Endpoints:   []*endpointv3.LocalityLbEndpoints{{LbEndpoints: lbs}},
	}
	c.TypedExtensionProtocolOptions = map[string]*anypb.Any{httpProtocolOptions: b.any(opts)}
	return nil
}

func (b *builder) listener(name string, addr *corev3.Address, hcm *hcmv3.HttpConnectionManager) *listenerv3.Listener {
	return &listenerv3.Listener{
		Name:    name,
		Address: addr,
		FilterChains: []*listenerv3.FilterChain{{
			Filters: []*listenerv3.Filter{{
				Name:       filterHCM,
				ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: b.any(hcm)},
			}},
		}},
	}
}

func (b *builder) httpFilter(name string, cfg proto.Message) *hcmv3.HttpFilter {
	return &hcmv3.HttpFilter{Name: name, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: b.any(cfg)}}
}

// adsSource says: fetch over the same ADS stream, in the v3 API.
func adsSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ResourceApiVersion:    corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
	}
}

type hostPort struct {
	host string
	port uint32
}

// splitHostPort parses host:port with a numeric port.
func splitHostPort(s string) (hostPort, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return hostPort{}, fmt.Errorf("%q is not host:port: %w", s, err)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return hostPort{}, fmt.Errorf("%q: port must be a number from 0 to 65535", s)
	}
	return hostPort{host: host, port: uint32(p)}, nil
}

// endpoint is an address Envoy connects to. An empty host is the local
// host, as when Go dials ":port".
func endpoint(s string) (hostPort, error) {
	hp, err := splitHostPort(s)
	if err != nil {
		return hostPort{}, err
	}
	if hp.host == "" {
		hp.host = "127.0.0.1"
	}
	return hp, nil
}

// listenAddress is an address Envoy binds. Envoy binds IP addresses only;
// an empty host means all interfaces, as in Go, and localhost the IPv4
// loopback (config.ListenIP, which the loader checks envoy.listen with).
func listenAddress(s string) (*corev3.Address, error) {
	hp, err := splitHostPort(s)
	if err != nil {
		return nil, err
	}
	ip := config.ListenIP(hp.host)
	if ip == nil {
		return nil, fmt.Errorf("%q: Envoy listens on IP addresses only, not on host names", s)
	}
	if net.ParseIP(hp.host) == nil { // "" or localhost
		hp.host = ip.String()
	}
	return socketAddress(hp.host, hp.port), nil
}

// overlap reports whether listeners on a and b would claim the same
// connections: the same port, other than 0 (which picks a free one), on
// the same IP address, or on any where either is a wildcard.
func overlap(a, b *corev3.Address) bool {
	sa, sb := a.GetSocketAddress(), b.GetSocketAddress()
	if sa == nil || sb == nil || sa.GetPortValue() != sb.GetPortValue() || sa.GetPortValue() == 0 {
		return false
	}
	ia, ib := net.ParseIP(sa.GetAddress()), net.ParseIP(sb.GetAddress())
	if ia == nil || ib == nil {
		return sa.GetAddress() == sb.GetAddress()
	}
	return ia.IsUnspecified() || ib.IsUnspecified() || ia.Equal(ib)
}

func socketAddress(host string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Protocol:      corev3.SocketAddress_TCP,
		Address:       host,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

// upstreamTarget is where an upstream URL points.
type upstreamTarget struct {
	hostPort
	tls bool
	// authority is the URL's host[:port] as written, what the server
	// expects in Host.
	authority string
}

// parseUpstreamURL never quotes the URL in its errors: it may carry a
// credential in its query.
func parseUpstreamURL(raw string) (upstreamTarget, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return upstreamTarget{}, errors.New("url is not a valid URL")
	}
	var t upstreamTarget
	switch u.Scheme {
	case "https":
		t.tls, t.port = true, 443
	case "http":
		t.port = 80
	default:
		return upstreamTarget{}, errors.New("url scheme must be http or https")
	}
	t.host, t.authority = u.Hostname(), u.Host
	if t.host == "" {
		return upstreamTarget{}, errors.New("url has no host")
	}
	if p := u.Port(); p != "" {
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil || n == 0 {
			return upstreamTarget{}, errors.New("url port must be a number from 1 to 65535")
		}
		t.port = uint32(n)
	}
	return t, nil
}
