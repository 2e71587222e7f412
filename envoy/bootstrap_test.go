package envoy_test

import (
	"net"
	"os"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
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
