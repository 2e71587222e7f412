package xds

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/amgateway/amg/internal/config"
)

// Options tune a Server. A nil *Options is the zero value.
type Options struct {
	// Logger receives update, stream and rejection (NACK) events; nil
	// discards them.
	Logger *slog.Logger
	// GRPC are further options of the gRPC server, such as a stats
	// handler for tracing.
	GRPC []grpc.ServerOption
}

// Server serves the current resources to every Envoy over ADS
// (envoy.service.discovery.v3.AggregatedDiscoveryService). Only ADS is
// served: the route configurations name ADS as their source, so an Envoy
// must be bootstrapped with an ads_config pointing here. Only its
// state-of-the-world form (api_type GRPC), and only the types this server
// has: a client asking for anything else has its stream ended, so that
// nothing it sends is kept.
type Server struct {
	log    *slog.Logger
	cache  cachev3.SnapshotCache
	grpc   *grpc.Server
	cancel context.CancelFunc

	// build is Build, replaceable by tests to hand Update resources no
	// config produces.
	build func(*config.Config) (*Resources, error)

	mu      sync.Mutex // serializes Update
	seq     uint64
	version string

	// streamsMu guards streams: what each ADS stream was last sent and
	// rejected, per resource type.
	streamsMu sync.Mutex
	streams   map[int64]map[string]*sent
}

// sent is the last response of one type on one stream, and the last
// version of that type the stream's Envoy rejected.
type sent struct {
	nonce, version string
	rejected       string
}

// nodeKey is the one cache key: every Envoy in front of this AMG gets the
// same configuration, whatever its node id.
const nodeKey = "amg"

type sameForAll struct{}

func (sameForAll) ID(*corev3.Node) string { return nodeKey }

// gRPC keepalive: Envoy holds its ADS stream for its whole life, so the
// server pings to find peers that vanished, and lets Envoy ping back as
// often as a typical bootstrap's connection_keepalive asks.
const (
	keepaliveTime    = 30 * time.Second
	keepaliveTimeout = 5 * time.Second
	keepaliveMinTime = 10 * time.Second
)

// Limits on what a client of the xDS port may send, which needs no
// credential: Envoy's requests are its node (with the list of its
// extensions, the largest part) and, when it rejects a configuration,
// why.
const (
	maxRequestBytes = 1 << 20
	maxStreams      = 8 // per connection; Envoy opens one
	// maxLoggedBytes bounds each client-given string a log line quotes.
	maxLoggedBytes = 1 << 10
)

// served are the resource types the server has.
var served = map[string]bool{resource.ListenerType: true, resource.RouteType: true, resource.ClusterType: true}

// NewServer returns a Server with no resources: Envoy's requests wait until
// the first successful Update.
func NewServer(opts *Options) *Server {
	if opts == nil {
		opts = &Options{}
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		log:     log,
		cache:   cachev3.NewSnapshotCache(true, sameForAll{}, cacheLogger{log}),
		cancel:  cancel,
		build:   Build,
		streams: map[int64]map[string]*sent{},
	}
	s.grpc = grpc.NewServer(append([]grpc.ServerOption{
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: keepaliveTime, Timeout: keepaliveTimeout}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: keepaliveMinTime, PermitWithoutStream: true}),
		grpc.MaxRecvMsgSize(maxRequestBytes),
		grpc.MaxConcurrentStreams(maxStreams),
	}, opts.GRPC...)...)
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(s.grpc, sotwOnly{serverv3.NewServer(ctx, s.cache, s.callbacks())})
	return s
}

// sotwOnly is the ADS service without its delta form, which Envoy uses
// only when bootstrapped with api_type DELTA_GRPC.
type sotwOnly struct{ serverv3.Server }

func (sotwOnly) DeltaAggregatedResources(discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	return status.Error(codes.Unimplemented, "amg's xDS server serves state-of-the-world ADS only (api_type GRPC)")
}

// Update builds the resources for cfg and, if they are valid and
// consistent, serves them to every Envoy under a new version. On any
// failure it returns an error saying what failed, and Envoy keeps getting
// the last good version.
func (s *Server) Update(cfg *config.Config) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	res, err := s.build(cfg)
	if err != nil {
		return fmt.Errorf("xds update: %w", err)
	}
	if err := res.Validate(); err != nil {
		return fmt.Errorf("xds update: invalid resources: %w", err)
	}
	hash, err := res.hash()
	if err != nil {
		return fmt.Errorf("xds update: %w", err)
	}
	// The sequence makes each Update a new version; the content hash keeps
	// a restarted AMG, whose sequence starts over, from reusing a version
	// an Envoy already holds for different resources.
	version := strconv.FormatUint(s.seq+1, 10) + "-" + hash
	snap, err := cachev3.NewSnapshot(version, res.byType())
	if err != nil {
		return fmt.Errorf("xds update: %w", err)
	}
	if err := snap.Consistent(); err != nil {
		return fmt.Errorf("xds update: inconsistent snapshot: %w", err)
	}
	if err := s.cache.SetSnapshot(context.Background(), nodeKey, snap); err != nil {
		return fmt.Errorf("xds update: set snapshot: %w", err)
	}
	s.seq++
	s.version = version
	s.log.Info("xds: serving new envoy config", "version", version,
		"listeners", len(res.Listeners), "routes", len(res.Routes), "clusters", len(res.Clusters))
	return nil
}

// Version is the version being served, "" before the first Update.
func (s *Server) Version() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.version
}

// Serve serves ADS on lis until Stop; it returns nil after Stop.
func (s *Server) Serve(lis net.Listener) error {
	if err := s.grpc.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("xds serve: %w", err)
	}
	return nil
}

// Stop ends every stream and closes the listeners Serve was given.
func (s *Server) Stop() {
	s.cancel()
	s.grpc.Stop()
}

// callbacks log what an operator needs: which Envoys are connected, and
// above all a rejected configuration, which Envoy reports only here. They
// also keep a rejected version from being sent again (see request).
func (s *Server) callbacks() serverv3.Callbacks {
	return serverv3.CallbackFuncs{
		StreamOpenFunc: func(_ context.Context, id int64, typeURL string) error {
			s.log.Debug("xds: stream opened", "stream", id, "type", typeURL)
			return nil
		},
		StreamClosedFunc: func(id int64, node *corev3.Node) {
			s.streamsMu.Lock()
			delete(s.streams, id)
			s.streamsMu.Unlock()
			s.log.Debug("xds: stream closed", "stream", id, "node", node.GetId())
		},
		StreamRequestFunc: func(id int64, req *discoveryv3.DiscoveryRequest) error {
			if !served[req.GetTypeUrl()] {
				// Before the server makes a watch, which would keep the
				// request for as long as the stream lasts.
				return status.Errorf(codes.InvalidArgument, "amg's xDS server has listeners, routes and clusters, not %q",
					clip(req.GetTypeUrl()))
			}
			s.request(id, req)
			return nil
		},
		StreamResponseFunc: func(_ context.Context, id int64, _ *discoveryv3.DiscoveryRequest, resp *discoveryv3.DiscoveryResponse) {
			s.streamsMu.Lock()
			defer s.streamsMu.Unlock()
			last := s.last(id, resp.GetTypeUrl())
			last.nonce, last.version = resp.GetNonce(), resp.GetVersionInfo()
		},
	}
}

// request logs a rejection (a NACK: a request with error_detail) once per
// stream, type and version, and makes a request that answers a rejected
// response say it holds that response's version. A NACK carries the
// version Envoy last accepted, and the cache answers a request whose
// version differs from its snapshot's with the snapshot: left as it is,
// each NACK would be answered with the version just rejected, which Envoy
// rejects again, in a loop until the next Update. Said to hold it, Envoy
// gets the next version Update makes, as a client that accepted it would.
// A request answering an older response is left alone: the server ignores
// it.
func (s *Server) request(id int64, req *discoveryv3.DiscoveryRequest) {
	s.streamsMu.Lock()
	defer s.streamsMu.Unlock()
	last := s.last(id, req.GetTypeUrl())
	current := last.nonce != "" && req.GetResponseNonce() == last.nonce
	if d := req.GetErrorDetail(); d != nil {
		switch {
		case !current:
			// Not an answer to what this stream was last sent: nothing an
			// operator can act on, and anyone who reaches the port can
			// send it.
			s.log.Debug("xds: rejection of no current response", "stream", id, "node", clip(req.GetNode().GetId()),
				"type", req.GetTypeUrl(), "nonce", clip(req.GetResponseNonce()), "error", clip(d.GetMessage()))
		case last.rejected != last.version:
			last.rejected = last.version
			s.log.Error("xds: envoy rejected config", "stream", id, "node", clip(req.GetNode().GetId()),
				"type", req.GetTypeUrl(), "version", last.version, "nonce", req.GetResponseNonce(), "error", clip(d.GetMessage()))
		}
	}
	if current && last.rejected == last.version {
		req.VersionInfo = last.version
	}
}

// clip cuts a string a client gave to what a log line quotes of it.
func clip(s string) string {
	if len(s) <= maxLoggedBytes {
		return s
	}
	n := maxLoggedBytes
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// last is what stream id was last sent of typeURL. s.streamsMu is held.
func (s *Server) last(id int64, typeURL string) *sent {
	types := s.streams[id]
	if types == nil {
		types = map[string]*sent{}
		s.streams[id] = types
	}
	l := types[typeURL]
	if l == nil {
		l = &sent{}
		types[typeURL] = l
	}
	return l
}

// byType is the snapshot's view of r.
func (r *Resources) byType() map[resource.Type][]types.Resource {
	m := map[resource.Type][]types.Resource{
		resource.ListenerType: make([]types.Resource, 0, len(r.Listeners)),
		resource.RouteType:    make([]types.Resource, 0, len(r.Routes)),
		resource.ClusterType:  make([]types.Resource, 0, len(r.Clusters)),
	}
	for _, l := range r.Listeners {
		m[resource.ListenerType] = append(m[resource.ListenerType], l)
	}
	for _, rc := range r.Routes {
		m[resource.RouteType] = append(m[resource.RouteType], rc)
	}
	for _, c := range r.Clusters {
		m[resource.ClusterType] = append(m[resource.ClusterType], c)
	}
	return m
}

// hash is a short digest of r's content, in its fixed order.
func (r *Resources) hash() (string, error) {
	h := sha256.New()
	opts := proto.MarshalOptions{Deterministic: true}
	for _, typ := range []resource.Type{resource.ListenerType, resource.RouteType, resource.ClusterType} {
		for _, m := range r.byType()[typ] {
			b, err := opts.Marshal(m)
			if err != nil {
				return "", fmt.Errorf("encode %s %s: %w", typ, cachev3.GetResourceName(m), err)
			}
			// Length-prefixed, so that resource boundaries count.
			h.Write(strconv.AppendInt(nil, int64(len(b)), 10))
			h.Write([]byte{':'})
			h.Write(b)
		}
	}
	return hex.EncodeToString(h.Sum(nil))[:12], nil
}

// cacheLogger sends go-control-plane's cache logs to slog, each message
// cut as a client's string is: the cache quotes the resource names a
// request gave, as many as a request may hold. Its info messages are
// per-watch chatter, and its warnings are about what a client asked (in
// ADS mode, a request that does not name every resource the snapshot
// has, which anyone who reaches the port can send as often as it likes,
// and Envoy's own route requests do while a listener change reaches it),
// so both go at debug.
type cacheLogger struct{ log *slog.Logger }

func (l cacheLogger) logf(level slog.Level, format string, args []any) {
	if l.log.Enabled(context.Background(), level) {
		l.log.Log(context.Background(), level, "xds cache: "+clip(fmt.Sprintf(format, args...)))
	}
}

func (l cacheLogger) Debugf(format string, args ...any) { l.logf(slog.LevelDebug, format, args) }
func (l cacheLogger) Infof(format string, args ...any)  { l.logf(slog.LevelDebug, format, args) }
func (l cacheLogger) Warnf(format string, args ...any)  { l.logf(slog.LevelDebug, format, args) }
func (l cacheLogger) Errorf(format string, args ...any) { l.logf(slog.LevelError, format, args) }
