// Package authztest holds what tests, benchmarks and the load harness need
// to talk to the authz service as Envoy does.
package authztest

import (
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/amgateway/amg/internal/decision/decisiontest"
)

// BenchPolicy is the grant every benchmark of AMG decides on.
const BenchPolicy = decisiontest.BenchPolicy

// BenchBody returns a tools/call body of about 2 KB that BenchPolicy allows.
func BenchBody() string {
	query := strings.Repeat("disk full on the primary database replica; ", 38)[:1630]
	return `{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"notion__get_pages","arguments":{` +
		`"workspace_id":"ws_abc123","limit":50,"offset":0,"cursor":"c_0123456789abcdef","sort":"updated",` +
		`"direction":"desc","include_body":false,"page_id":"pg_Ab12Cd34Ef56","path":"/teams/platform/runbook.md",` +
		`"filter":{"owner":"alice"},"tags":["ops","oncall"],"query":"` + query + `"}}}`
}

// EnvoyRequest builds a CheckRequest shaped as Envoy sends it with
// with_request_body and pack_as_bytes: lower-case headers including the
// pseudo-headers, the body in raw_body. hdrs are added to the defaults.
func EnvoyRequest(method string, hdrs map[string]string, body string) *authv3.CheckRequest {
	h := map[string]string{
		":authority":   "127.0.0.1:8080",
		":method":      method,
		":path":        "/mcp",
		":scheme":      "http",
		"content-type": "application/json",
		"accept":       "application/json, text/event-stream",
		"x-request-id": "4f1c2a9e-0000-4000-8000-000000000001",
	}
	for k, v := range hdrs {
		h[k] = v
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source: &authv3.AttributeContext_Peer{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{
			SocketAddress: &corev3.SocketAddress{Address: "127.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 53124}}}}},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Id: "1234", Method: method, Path: "/mcp", Host: "127.0.0.1:8080", Scheme: "http", Protocol: "HTTP/1.1",
			Headers: h, Size: int64(len(body)), RawBody: []byte(body),
		}},
	}}
}
