package xds

import (
	"errors"
	"fmt"

	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
)

// ExtAuthzConfig returns the ext_authz filter config of the agent
// listener in res, decoded, so that a test standing in for Envoy can send
// Check requests exactly as that config says (body limit, bytes or
// string, timeout).
func ExtAuthzConfig(res *Resources) (*extauthzv3.ExtAuthz, error) {
	hcm, err := agentHCM(res)
	if err != nil {
		return nil, err
	}
	for _, f := range hcm.GetHttpFilters() {
		if f.GetName() != FilterExtAuthz {
			continue
		}
		cfg := &extauthzv3.ExtAuthz{}
		if err := f.GetTypedConfig().UnmarshalTo(cfg); err != nil {
			return nil, fmt.Errorf("ext_authz config: %w", err)
		}
		return cfg, nil
	}
	return nil, fmt.Errorf("ext_authz config: listener %s has no %s filter", ListenerAgent, FilterExtAuthz)
}

// agentHCM decodes the HTTP connection manager of the agent listener.
func agentHCM(res *Resources) (*hcmv3.HttpConnectionManager, error) {
	if res == nil {
		return nil, errors.New("ext_authz config: nil resources")
	}
	for _, l := range res.Listeners {
		if l.GetName() != ListenerAgent {
			continue
		}
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				if f.GetName() != filterHCM {
					continue
				}
				hcm := &hcmv3.HttpConnectionManager{}
				if err := f.GetTypedConfig().UnmarshalTo(hcm); err != nil {
					return nil, fmt.Errorf("ext_authz config: listener %s: %w", ListenerAgent, err)
				}
				return hcm, nil
			}
		}
		return nil, fmt.Errorf("ext_authz config: listener %s has no http connection manager", ListenerAgent)
	}
	return nil, fmt.Errorf("ext_authz config: no listener %s", ListenerAgent)
}
