// Package envoy holds the Envoy bootstrap AMG's Envoy mode runs with
// (envoy.yaml in this directory) and the checks its tests, the deployment
// tests and the xDS server share: ParseBootstrap loads a bootstrap as
// strictly as Envoy's schema allows, without running Envoy, and Validate
// applies Envoy's field rules to any of its messages.
package envoy

import (
	"errors"
	"fmt"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	// Types the bootstrap names in typed configs (the xDS cluster's
	// protocol options, the overload manager's resource monitors); an Any
	// whose type is not linked in does not resolve and fails to parse.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/resource_monitors/downstream_connections/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/resource_monitors/fixed_heap/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
)

// ParseBootstrap parses a YAML Envoy v3 bootstrap. Unknown fields, values
// of the wrong type, unknown enum names and unresolvable Any types are
// errors, and the result, typed configs included, must pass the
// protoc-gen-validate rules Envoy itself applies (every violation is
// reported, not only the first).
func ParseBootstrap(data []byte) (*bootstrapv3.Bootstrap, error) {
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, fmt.Errorf("bootstrap YAML: %w", err)
	}
	b := &bootstrapv3.Bootstrap{}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(js, b); err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	if err := Validate(b); err != nil {
		return nil, fmt.Errorf("bootstrap validation: %w", err)
	}
	return b, nil
}

// StaticClusterAddress returns the host and port of the one endpoint of the
// static cluster name in b.
func StaticClusterAddress(b *bootstrapv3.Bootstrap, name string) (host string, port uint32, err error) {
	for _, c := range b.GetStaticResources().GetClusters() {
		if c.GetName() != name {
			continue
		}
		var addrs []string
		for _, le := range c.GetLoadAssignment().GetEndpoints() {
			for _, lb := range le.GetLbEndpoints() {
				sa := lb.GetEndpoint().GetAddress().GetSocketAddress()
				if sa == nil {
					return "", 0, fmt.Errorf("cluster %s: an endpoint has no socket address", name)
				}
				host, port = sa.GetAddress(), sa.GetPortValue()
				addrs = append(addrs, fmt.Sprintf("%s:%d", host, port))
			}
		}
		if len(addrs) != 1 {
			return "", 0, fmt.Errorf("cluster %s has %d endpoints %v, want exactly one", name, len(addrs), addrs)
		}
		return host, port, nil
	}
	return "", 0, errors.New("no static cluster " + name)
}
