package authz

import (
	"bytes"
	"context"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/amgateway/amg/authz/authztest"
)

// fullRequest is a CheckRequest with every field Envoy can send set.
func fullRequest(t testing.TB) *authv3.CheckRequest {
	req := envoyRequest("POST", map[string]string{"authorization": "Bearer amg_x", "x-naïve": "välue ✓"}, authztest.BenchBody())
	a := req.Attributes
	a.Source.Service, a.Source.Principal, a.Source.Certificate = "agent", "spiffe://example/agent", "-----BEGIN CERTIFICATE-----"
	a.Source.Labels = map[string]string{"app": "agent"}
	a.Destination = &authv3.AttributeContext_Peer{Principal: "spiffe://example/amg", Address: a.Source.Address}
	a.ContextExtensions = map[string]string{"route": "mcp", "": "empty key"}
	meta, err := structpb.NewStruct(map[string]any{"sub": "alice", "scopes": []any{"read", 2.5, true, nil}})
	if err != nil {
		t.Fatal(err)
	}
	a.MetadataContext = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"envoy.filters.http.jwt_authn": meta}}
	a.RouteMetadataContext = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"amg": meta}}
	a.TlsSession = &authv3.AttributeContext_TLSSession{Sni: "amg.example"}
	a.Request.Time = timestamppb.New(time.Date(2026, 11, 26, 7, 0, 0, 5, time.UTC))
	h := a.Request.Http
	h.Query, h.Fragment, h.Body = "a=1", "top", "body as text"
	h.HeaderMap = &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: "x", Value: "y"}, {Key: "raw", RawValue: []byte{0xff, 0}}}}
	return req
}

func marshal(t testing.TB, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Protobuf encoding by hand, for what proto.Marshal will not write.
func lenField(num protowire.Number, data ...[]byte) []byte {
	b := protowire.AppendTag(nil, num, protowire.BytesType)
	return protowire.AppendBytes(b, bytes.Join(data, nil))
}

func varintField(num protowire.Number, v uint64) []byte {
	return protowire.AppendVarint(protowire.AppendTag(nil, num, protowire.VarintType), v)
}

// httpRequest wraps the encoded fields of an HttpRequest in a CheckRequest.
func httpRequest(fields ...[]byte) []byte {
	return lenField(1, lenField(4, lenField(2, fields...)))
}

func TestDecodeCheckRequestTakesEnvoysShapes(t *testing.T) {
	for name, req := range map[string]*authv3.CheckRequest{
		"bench":         envoyRequest("POST", map[string]string{"authorization": "Bearer amg_x"}, authztest.BenchBody()),
		"full":          fullRequest(t),
		"empty body":    envoyRequest("GET", nil, ""),
		"no attributes": {},
		"empty":         {Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{}}}},
	} {
		t.Run(name, func(t *testing.T) {
			b := marshal(t, req)
			got := new(authv3.CheckRequest)
			if !decodeCheckRequest(bytes.Clone(b), got) {
				t.Fatal("the shortcut declined a request in Envoy's shape")
			}
			if diff := cmp.Diff(req, got, protocmp.Transform()); diff != "" {
				t.Errorf("decoded request differs (-sent +decoded):\n%s", diff)
			}
		})
	}
}

// What the shortcut declines, the protobuf library decodes: the codec's
// result is the library's either way.
func TestCodecDecodesTheRestAsTheLibraryDoes(t *testing.T) {
	unknownAt := func(pick func(*authv3.CheckRequest) proto.Message) []byte {
		req := fullRequest(t)
		pick(req).ProtoReflect().SetUnknown(varintField(99, 7))
		return marshal(t, req)
	}
	bench := marshal(t, envoyRequest("POST", nil, authztest.BenchBody()))
	for _, tc := range []struct {
		name    string
		b       []byte
		wantErr bool
	}{
		{name: "unknown field in CheckRequest", b: unknownAt(func(r *authv3.CheckRequest) proto.Message { return r })},
		{name: "unknown field in attributes", b: unknownAt(func(r *authv3.CheckRequest) proto.Message { return r.Attributes })},
		{name: "unknown field in request", b: unknownAt(func(r *authv3.CheckRequest) proto.Message { return r.Attributes.Request })},
		{name: "unknown field in http", b: unknownAt(func(r *authv3.CheckRequest) proto.Message { return r.Attributes.Request.Http })},
		{name: "unknown field in source", b: unknownAt(func(r *authv3.CheckRequest) proto.Message { return r.Attributes.Source })},
		{name: "attributes twice, merged", b: append(bytes.Clone(bench), marshal(t, fullRequest(t))...)},
		{name: "http twice, merged", b: lenField(1, lenField(4, lenField(2, lenField(2, []byte("GET"))), lenField(2, lenField(4, []byte("/mcp")))))},
		{name: "source twice, merged", b: lenField(1, lenField(1, lenField(2, []byte("a"))), lenField(1, lenField(4, []byte("p"))))},
		{name: "empty peer address", b: lenField(1, lenField(1, lenField(1)))},
		{name: "pipe address", b: marshal(t, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Source: &authv3.AttributeContext_Peer{
			Address: &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: "/run/envoy.sock"}}}}}})},
		{name: "socket address twice, merged", b: lenField(1, lenField(2, lenField(1, lenField(1, lenField(2, []byte("::1"))), lenField(1, varintField(3, 8080)))))},
		{name: "port twice, last wins", b: lenField(1, lenField(2, lenField(1, lenField(1, varintField(3, 8080), lenField(4, []byte("http")), varintField(1, 1), varintField(6, 2)))))},
		{name: "protocol past the enum's values", b: lenField(1, lenField(2, lenField(1, lenField(1, varintField(1, 1<<32|6)))))},
		{name: "negative protocol", b: lenField(1, lenField(2, lenField(1, lenField(1, varintField(1, 1<<64-2)))))},
		{name: "port number past 32 bits", b: lenField(1, lenField(2, lenField(1, lenField(1, varintField(3, 1<<33|443)))))},
		{name: "repeated scalar, last wins", b: httpRequest(lenField(2, []byte("GET")), lenField(2, []byte("POST")), varintField(9, 1), varintField(9, 2))},
		{name: "header entry twice, last wins", b: httpRequest(lenField(3, lenField(1, []byte("k")), lenField(2, []byte("1"))), lenField(3, lenField(1, []byte("k")), lenField(2, []byte("2"))))},
		{name: "header entry without key or value", b: httpRequest(lenField(3), lenField(3, lenField(2, []byte("v"))))},
		{name: "header entry with an unknown field", b: httpRequest(lenField(3, lenField(1, []byte("k")), varintField(3, 1)))},
		{name: "string sent as varint", b: httpRequest(varintField(2, 5))},
		{name: "size sent as bytes", b: httpRequest(lenField(9, []byte{1}))},
		{name: "fixed64 field", b: httpRequest(protowire.AppendFixed64(protowire.AppendTag(nil, 9, protowire.Fixed64Type), 1))},
		{name: "invalid UTF-8 in a header", b: httpRequest(lenField(3, lenField(1, []byte("k")), lenField(2, []byte{0xff}))), wantErr: true},
		{name: "invalid UTF-8 in the path", b: httpRequest(lenField(4, []byte{'/', 0xc3})), wantErr: true},
		{name: "invalid UTF-8 in the source", b: lenField(1, lenField(1, lenField(4, []byte{0xff}))), wantErr: true},
		{name: "truncated", b: bench[:len(bench)-1], wantErr: true},
		{name: "field number zero", b: append(bytes.Clone(bench), 0x02, 0x00), wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := new(authv3.CheckRequest)
			werr := proto.Unmarshal(tc.b, want)
			if (werr != nil) != tc.wantErr {
				t.Fatalf("proto.Unmarshal: %v; the case expects an error: %v", werr, tc.wantErr)
			}
			got := new(authv3.CheckRequest)
			err := codec{}.Unmarshal(mem.BufferSlice{mem.SliceBuffer(bytes.Clone(tc.b))}, got)
			if (err != nil) != tc.wantErr {
				t.Fatalf("codec: %v; the library: %v", err, werr)
			}
			if diff := cmp.Diff(want, got, protocmp.Transform()); err == nil && diff != "" {
				t.Errorf("the codec decodes differently from the library (-library +codec):\n%s", diff)
			}
		})
	}
}

func FuzzDecodeCheckRequest(f *testing.F) {
	f.Add(marshal(f, fullRequest(f)))
	f.Add(marshal(f, envoyRequest("POST", map[string]string{"authorization": "Bearer amg_x"}, `{"jsonrpc":"2.0","id":1,"method":"ping"}`)))
	f.Add(httpRequest(lenField(3, lenField(1, []byte("k")), lenField(2, []byte("v"))), varintField(9, 3), lenField(12, []byte("{}"))))
	f.Fuzz(func(t *testing.T, b []byte) {
		want := new(authv3.CheckRequest)
		werr := proto.Unmarshal(b, want)
		if decodeCheckRequest(bytes.Clone(b), new(authv3.CheckRequest)) && werr != nil {
			t.Fatalf("the shortcut took a message the library rejects: %v", werr)
		}
		got := new(authv3.CheckRequest)
		err := codec{}.Unmarshal(mem.BufferSlice{mem.SliceBuffer(bytes.Clone(b))}, got)
		if (err == nil) != (werr == nil) {
			t.Fatalf("codec: %v; the library: %v", err, werr)
		}
		if err == nil && !proto.Equal(want, got) {
			t.Fatalf("the codec decodes differently from the library:\n%s", cmp.Diff(want, got, protocmp.Transform()))
		}
	})
}

func TestCodecEncodesAsTheLibraryDoes(t *testing.T) {
	srv, secret, done := newBenchServer(t)
	defer done()
	allowed, err := srv.Check(context.Background(), envoyRequest("POST", map[string]string{"authorization": "Bearer " + secret}, authztest.BenchBody()))
	if err != nil || allowed.GetOkResponse() == nil {
		t.Fatalf("Check: %v, %v", allowed, err)
	}
	denied, err := srv.Check(context.Background(), envoyRequest("POST", nil, authztest.BenchBody()))
	if err != nil || denied.GetDeniedResponse() == nil {
		t.Fatalf("Check: %v, %v", denied, err)
	}
	large := proto.CloneOf(denied)
	large.GetDeniedResponse().Body = string(bytes.Repeat([]byte("x"), 64<<10))
	for name, m := range map[string]proto.Message{
		"allowed": allowed,
		"denied":  denied,
		"large":   large,
		"other":   wrapperspb.String("not one of Envoy's"),
	} {
		t.Run(name, func(t *testing.T) {
			data, err := codec{}.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			defer data.Free()
			got := m.ProtoReflect().New().Interface()
			if err := proto.Unmarshal(data.Materialize(), got); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(m, got, protocmp.Transform()); diff != "" {
				t.Errorf("encoded and decoded again, the message differs (-sent +received):\n%s", diff)
			}
		})
	}
}

// BenchmarkDecodeCheckRequest compares the codec with gRPC's default on the
// request every benchmark of AMG sends.
func BenchmarkDecodeCheckRequest(b *testing.B) {
	req := envoyRequest("POST", map[string]string{"authorization": "Bearer amg_0123456789abcdef0123456789abcdef", "mcp-protocol-version": "2025-06-18"}, authztest.BenchBody())
	data := mem.BufferSlice{mem.SliceBuffer(marshal(b, req))}
	for name, c := range map[string]interface {
		Unmarshal(mem.BufferSlice, any) error
	}{"default": protoCodec, "amg": codec{}} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := c.Unmarshal(data, new(authv3.CheckRequest)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkEncodeCheckResponse compares the codec with gRPC's default on an
// allowed Check's response.
func BenchmarkEncodeCheckResponse(b *testing.B) {
	srv, secret, done := newBenchServer(b)
	defer done()
	resp, _ := srv.Check(context.Background(), envoyRequest("POST", map[string]string{"authorization": "Bearer " + secret}, authztest.BenchBody()))
	for name, c := range map[string]interface {
		Marshal(any) (mem.BufferSlice, error)
	}{"default": protoCodec, "amg": codec{}} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				data, err := c.Marshal(resp)
				if err != nil {
					b.Fatal(err)
				}
				data.Free()
			}
		})
	}
}

// Metadata nests as deep as a client likes; the codec must refuse exactly
// what the library refuses, at the library's recursion limit.
func TestCodecKeepsTheRecursionLimit(t *testing.T) {
	// nested is a CheckRequest whose metadata holds a Value nested in n
	// more messages than the one before.
	nested := func(n int) []byte {
		// A Struct level is three messages (Value, Struct, the map entry);
		// the leaf makes up the rest.
		leaves := []*structpb.Value{
			structpb.NewNullValue(),
			structpb.NewListValue(&structpb.ListValue{}),
			structpb.NewListValue(&structpb.ListValue{Values: []*structpb.Value{structpb.NewNullValue()}}),
		}
		v := leaves[n%3]
		for range n / 3 {
			v = structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{"a": v}})
		}
		meta := &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"f": {Fields: map[string]*structpb.Value{"a": v}}}}
		return marshal(t, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{MetadataContext: meta}})
	}
	ok := func(b []byte) bool { return proto.Unmarshal(b, new(authv3.CheckRequest)) == nil }
	// The deepest nesting the library takes.
	lo, hi := 0, 3*protowire.DefaultRecursionLimit
	if !ok(nested(lo)) || ok(nested(hi)) {
		t.Fatalf("the library's limit is not between %d and %d", lo, hi)
	}
	for hi-lo > 1 {
		if mid := (lo + hi) / 2; ok(nested(mid)) {
			lo = mid
		} else {
			hi = mid
		}
	}
	for _, n := range []int{lo, hi} {
		err := codec{}.Unmarshal(mem.BufferSlice{mem.SliceBuffer(nested(n))}, new(authv3.CheckRequest))
		if (err == nil) != (n == lo) {
			t.Errorf("nesting %d: codec says %v; the library takes %d and refuses %d", n, err, lo, hi)
		}
	}
}
