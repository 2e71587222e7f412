//go:build vtprotobuf

package authz

import (
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
)

// Built as the Makefile builds AMG, the codec encodes responses with
// go-control-plane's generated code rather than falling back.
func TestCodecHasGeneratedMarshalling(t *testing.T) {
	if _, ok := any(&authv3.CheckResponse{}).(vtMarshaler); !ok {
		t.Fatal("CheckResponse has no generated marshalling code under the vtprotobuf build tag")
	}
}
