package envoy_test

import (
	"net"
	"os"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	overloadv3 "github.com/envoyproxy/go-control-plane/envoy/config/overload/v3"
	connectionsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/resource_monitors/downstream_connections/v3"
	heapv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/resource_monitors/fixed_heap/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"

	"github.com/amgateway/amg/envoy"
)

const httpOptionsKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

func readBootstrap(t *testing.T) []byte {
	t.Helper()
	data, err := os.ReadFile("envoy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestBootstrap(t *testing.T) {
	b, err := envoy.ParseBootstrap(readBootstrap(t))
	if err != nil {
		t.Fatal(err)
	}
	if b.GetNode().GetId() == "" || b.GetNode().GetCluster() == "" {
		t.Errorf("node = %v, want an id and a cluster (Envoy refuses ADS without them)", b.GetNode())
	}

	dr := b.GetDynamicResources()
	ads := dr.GetAdsConfig()
	if ads.GetApiType() != corev3.ApiConfigSource_GRPC || ads.GetTransportApiVersion() != corev3.ApiVersion_V3 {
		t.Errorf("ads_config api_type %v, transport %v; want GRPC, V3", ads.GetApiType(), ads.GetTransportApiVersion())
	}
	if gs := ads.GetGrpcServices(); len(gs) != 1 || gs[0].GetEnvoyGrpc().GetClusterName() != "amg_xds" {
		t.Errorf("ads_config grpc_services = %v, want one envoy_grpc to amg_xds", gs)
	}
	for name, cs := range map[string]*corev3.ConfigSource{"lds_config": dr.GetLdsConfig(), "cds_config": dr.GetCdsConfig()} {
		if cs.GetAds() == nil || cs.GetResourceApiVersion() != corev3.ApiVersion_V3 {
			t.Errorf("%s = %v, want ads: {} with resource_api_version V3", name, cs)
		}
	}

	var xds *clusterv3.Cluster
	for _, c := range b.GetStaticResources().GetClusters() {
		if c.GetName() == "amg_xds" {
			xds = c
		}
	}
	if xds == nil {
		t.Fatal("no static cluster amg_xds")
	}
	if xds.GetType() != clusterv3.Cluster_STRICT_DNS {
		t.Errorf("amg_xds type %v, want STRICT_DNS (the host is a DNS name)", xds.GetType())
	}
	anyOpts := xds.GetTypedExtensionProtocolOptions()[httpOptionsKey]
	if anyOpts == nil {
		t.Fatalf("amg_xds has no %s: gRPC needs HTTP/2", httpOptionsKey)
	}
	var opts httpv3.HttpProtocolOptions
	if err := anyOpts.UnmarshalTo(&opts); err != nil {
		t.Fatalf("%s: %v", httpOptionsKey, err)
	}
	if opts.GetExplicitHttpConfig().GetHttp2ProtocolOptions() == nil {
		t.Errorf("amg_xds protocol options %v, want explicit HTTP/2", &opts)
	}
	host, port, err := envoy.StaticClusterAddress(b, "amg_xds")
	if err != nil {
		t.Fatal(err)
	}
	if host != "amg" || port != 18000 {
		t.Errorf("amg_xds endpoint %s:%d, want amg:18000", host, port)
	}

	sa := b.GetAdmin().GetAddress().GetSocketAddress()
	if ip := net.ParseIP(sa.GetAddress()); ip == nil || !ip.IsLoopback() || sa.GetPortValue() != 9901 {
		t.Errorf("admin address %s:%d, want 127.0.0.1:9901: the admin API must not be reachable from outside", sa.GetAddress(), sa.GetPortValue())
	}
}

// Names of the overload manager's resource monitors and actions, as
// Envoy knows them.
const (
	monitorHeap        = "envoy.resource_monitors.fixed_heap"
	monitorConnections = "envoy.resource_monitors.global_downstream_max_connections"
	actionResetStreams = "envoy.overload_actions.reset_high_memory_stream"
	actionStopRequests = "envoy.overload_actions.stop_accepting_requests"
)

// TestBootstrapOverloadManager checks the limits Envoy holds itself to.
// The agent listener buffers request bodies before any token is checked,
// so without them connections, and what each makes Envoy hold, would be
// bounded by nothing but the pod's memory limit: a bound on connections,
// and, as the heap fills, resets of the streams holding the most and a
// refusal of new requests. deploy/deploy_test.go checks the heap size
// against the pod's memory limit.
func TestBootstrapOverloadManager(t *testing.T) {
	b, err := envoy.ParseBootstrap(readBootstrap(t))
	if err != nil {
		t.Fatal(err)
	}
	om := b.GetOverloadManager()
	if om == nil {
		t.Fatal("no overload_manager: Envoy would take connections and buffer bodies until the kernel kills it")
	}
	monitors := map[string]*overloadv3.ResourceMonitor{}
	for _, m := range om.GetResourceMonitors() {
		monitors[m.GetName()] = m
	}
	heap := &heapv3.FixedHeapConfig{}
	if m := monitors[monitorHeap]; m == nil {
		t.Errorf("no %s monitor", monitorHeap)
	} else if err := m.GetTypedConfig().UnmarshalTo(heap); err != nil || heap.GetMaxHeapSizeBytes() == 0 {
		t.Errorf("%s: %v, max_heap_size_bytes %d; want a heap size", monitorHeap, err, heap.GetMaxHeapSizeBytes())
	}
	conns := &connectionsv3.DownstreamConnectionsConfig{}
	if m := monitors[monitorConnections]; m == nil {
		t.Errorf("no %s monitor: Envoy would take any number of connections", monitorConnections)
	} else if err := m.GetTypedConfig().UnmarshalTo(conns); err != nil {
		t.Errorf("%s: %v", monitorConnections, err)
	}

	actions := map[string]*overloadv3.OverloadAction{}
	for _, a := range om.GetActions() {
		actions[a.GetName()] = a
		for _, tr := range a.GetTriggers() {
			// Envoy refuses a trigger on a monitor it does not have.
			if monitors[tr.GetName()] == nil {
				t.Errorf("action %s is triggered by %s, which is not a configured monitor", a.GetName(), tr.GetName())
			}
		}
	}
	for _, name := range []string{actionResetStreams, actionStopRequests} {
		a := actions[name]
		if a == nil || len(a.GetTriggers()) != 1 || a.GetTriggers()[0].GetName() != monitorHeap {
			t.Errorf("action %s = %v, want one trigger on %s", name, a, monitorHeap)
		}
	}
	// Envoy refuses reset_high_memory_stream without buffer accounting,
	// and resets only the streams it tracks: one holding a body of the
	// default max_body_bytes (1 MiB) must be.
	if n := om.GetBufferFactoryConfig().GetMinimumAccountToTrackPowerOfTwo(); n == 0 || n > 20 {
		t.Errorf("buffer_factory_config tracks streams from 2^%d bytes, want a body of 1 MiB tracked", n)
	}
	// Streams are reset before new requests are refused.
	scaling, stop := first(actions[actionResetStreams]).GetScaled().GetScalingThreshold(), first(actions[actionStopRequests]).GetThreshold().GetValue()
	if scaling >= stop {
		t.Errorf("streams are reset from %v of the heap, new requests refused from %v: the resets should come first", scaling, stop)
	}
}

// first is a's first trigger, or nil.
func first(a *overloadv3.OverloadAction) *overloadv3.Trigger {
	if len(a.GetTriggers()) == 0 {
		return nil
	}
	return a.GetTriggers()[0]
}

// TestBootstrapRejects checks that the parser is strict: each edit of the
// real file must be refused, with an error naming the cause.
func TestBootstrapRejects(t *testing.T) {
	good := string(readBootstrap(t))
	for _, tc := range []struct {
		name, old, new, want string
	}{
		{"unknown field", "  cluster: amg\n", "  cluster: amg\n  clustr: amg\n", "clustr"},
		{"unknown enum value", "type: STRICT_DNS", "type: STRICTER_DNS", "STRICTER_DNS"},
		{"wrong value type", "port_value: 18000", "port_value: eighteen", "eighteen"},
		{"port out of range", "port_value: 18000", "port_value: 70000", "PortValue"},
		{"unresolvable Any type", "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
			"type.googleapis.com/envoy.extensions.upstreams.http.v3.NoSuchOptions", "NoSuchOptions"},
		{"empty ADS cluster name", "cluster_name: amg_xds\n  lds_config", "cluster_name: \"\"\n  lds_config", "ClusterName"},
		{"bad duration", "connect_timeout: 1s", "connect_timeout: soon", "soon"},
		// A rule on a typed config, which the bootstrap's own do not reach.
		{"no connection limit", "max_active_downstream_connections: 2048", "max_active_downstream_connections: 0", "MaxActiveDownstreamConnections"},
		{"not YAML", "admin:\n", "admin: [\n", "YAML"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(good, tc.old) {
				t.Fatalf("envoy.yaml no longer contains %q; update the test", tc.old)
			}
			bad := strings.Replace(good, tc.old, tc.new, 1)
			_, err := envoy.ParseBootstrap([]byte(bad))
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

func TestStaticClusterAddress(t *testing.T) {
	b, err := envoy.ParseBootstrap(readBootstrap(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := envoy.StaticClusterAddress(b, "nope"); err == nil {
		t.Error("found a cluster that does not exist")
	}
	if _, _, err := envoy.StaticClusterAddress(&bootstrapv3.Bootstrap{}, "amg_xds"); err == nil {
		t.Error("found a cluster in an empty bootstrap")
	}
}
