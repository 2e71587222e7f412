package authz

import (
	"unicode/utf8"
	"unsafe"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// codec is the protobuf codec AMG serves Check with. It produces what
// gRPC's default codec does, with two shortcuts for the one RPC Envoy makes
// per agent request, whose generic decoding costs as much CPU as deciding it:
//
//   - a CheckRequest is decoded by decodeCheckRequest, which knows its
//     fields and lets the request's strings and body share one copy of the
//     message;
//   - a response is encoded by the marshalling code go-control-plane
//     generates for its messages.
//
// A CheckRequest the shortcut does not fully understand — an unknown field,
// a field of the wrong type, invalid UTF-8, a truncated message — is decoded
// by the protobuf library instead, so every input gets the library's result
// or its error. FuzzDecodeCheckRequest holds the two paths to that.
type codec struct{}

var protoCodec = encoding.GetCodecV2("proto")

func (codec) Name() string { return protoCodec.Name() }

// vtMarshaler is the generated marshalling code of go-control-plane's
// messages.
type vtMarshaler interface {
	SizeVT() int
	MarshalToSizedBufferVTStrict([]byte) (int, error)
}

func (codec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(vtMarshaler)
	if !ok {
		return protoCodec.Marshal(v)
	}
	size := m.SizeVT()
	if mem.IsBelowBufferPoolingThreshold(size) {
		buf := make([]byte, size)
		if _, err := m.MarshalToSizedBufferVTStrict(buf); err != nil {
			return nil, err
		}
		return mem.BufferSlice{mem.SliceBuffer(buf)}, nil
	}
	pool := mem.DefaultBufferPool()
	buf := pool.Get(size)
	if _, err := m.MarshalToSizedBufferVTStrict(*buf); err != nil {
		pool.Put(buf)
		return nil, err
	}
	return mem.BufferSlice{mem.NewBuffer(buf, pool)}, nil
}

func (codec) Unmarshal(data mem.BufferSlice, v any) error {
	req, ok := v.(*authv3.CheckRequest)
	if !ok {
		return protoCodec.Unmarshal(data, v)
	}
	// The copy the decoded request keeps: its strings point into it.
	b := data.Materialize()
	if decodeCheckRequest(b, req) {
		return nil
	}
	proto.Reset(req)
	return proto.Unmarshal(b, req)
}

// decodeCheckRequest decodes the CheckRequest b into the empty req as
// proto.Unmarshal would, and reports whether it could. On false, req holds
// a partial result and b is for proto.Unmarshal to decode (or reject).
//
// The request's string fields and body alias b, which must not change
// afterwards. Messages the shortcut does not need to be fast at (metadata,
// TLS session, time, header map) are decoded by the protobuf library,
// merged as repeated occurrences of a message field are.
func decodeCheckRequest(b []byte, req *authv3.CheckRequest) bool {
	return eachField(b, func(f field) bool {
		if f.num != 1 || f.typ != protowire.BytesType || req.Attributes != nil {
			return false
		}
		req.Attributes = new(authv3.AttributeContext)
		return decodeAttributes(f.data, req.Attributes)
	})
}

// Depths of the messages decodeCheckRequest delegates, for the library's
// recursion limit.
const (
	attributesDepth = 2 // CheckRequest.attributes.<field>
	httpDepth       = 4 // CheckRequest.attributes.request.http.<field>
)

func decodeAttributes(b []byte, a *authv3.AttributeContext) bool {
	return eachField(b, func(f field) bool {
		if f.typ != protowire.BytesType {
			return false
		}
		switch f.num {
		case 1:
			return decodePeer(f.data, &a.Source)
		case 2:
			return decodePeer(f.data, &a.Destination)
		case 4:
			if a.Request != nil {
				return false
			}
			a.Request = new(authv3.AttributeContext_Request)
			return decodeRequest(f.data, a.Request)
		case 10:
			return decodeEntry(f.data, &a.ContextExtensions)
		case 11:
			return merge(f.data, &a.MetadataContext, attributesDepth)
		case 12:
			return merge(f.data, &a.TlsSession, attributesDepth)
		case 13:
			return merge(f.data, &a.RouteMetadataContext, attributesDepth)
		}
		return false
	})
}

// decodePeer decodes a peer with a socket address, as Envoy sends the
// source and destination, into *p, which must be nil.
func decodePeer(b []byte, p **authv3.AttributeContext_Peer) bool {
	if *p != nil {
		return false
	}
	peer := new(authv3.AttributeContext_Peer)
	*p = peer
	return eachField(b, func(f field) bool {
		if f.typ != protowire.BytesType {
			return false
		}
		switch f.num {
		case 1:
			if peer.Address != nil {
				return false
			}
			addr := new(corev3.Address)
			peer.Address = addr
			return eachField(f.data, func(f field) bool {
				if f.num != 1 || f.typ != protowire.BytesType || addr.Address != nil {
					return false // a pipe or an internal address; or a merge
				}
				sa := new(corev3.SocketAddress)
				addr.Address = &corev3.Address_SocketAddress{SocketAddress: sa}
				return decodeSocketAddress(f.data, sa)
			})
		case 3:
			return decodeEntry(f.data, &peer.Labels)
		}
		s, ok := str(f.data)
		switch f.num {
		case 2:
			peer.Service = s
		case 4:
			peer.Principal = s
		case 5:
			peer.Certificate = s
		default:
			return false
		}
		return ok
	})
}

func decodeSocketAddress(b []byte, sa *corev3.SocketAddress) bool {
	return eachField(b, func(f field) bool {
		if f.typ == protowire.VarintType {
			switch f.num {
			case 1:
				sa.Protocol = corev3.SocketAddress_Protocol(int32(f.val))
			case 3:
				sa.PortSpecifier = &corev3.SocketAddress_PortValue{PortValue: uint32(f.val)}
			case 6:
				sa.Ipv4Compat = f.val != 0
			default:
				return false
			}
			return true
		}
		s, ok := str(f.data)
		switch f.num {
		case 2:
			sa.Address = s
		case 4:
			sa.PortSpecifier = &corev3.SocketAddress_NamedPort{NamedPort: s}
		case 5:
			sa.ResolverName = s
		case 7:
			sa.NetworkNamespaceFilepath = s
		default:
			return false
		}
		return ok
	})
}

func decodeRequest(b []byte, r *authv3.AttributeContext_Request) bool {
	return eachField(b, func(f field) bool {
		switch {
		case f.typ != protowire.BytesType:
			return false
		case f.num == 1:
			return merge(f.data, &r.Time, attributesDepth+1)
		case f.num == 2 && r.Http == nil:
			r.Http = new(authv3.AttributeContext_HttpRequest)
			return decodeHTTP(f.data, r.Http)
		}
		return false
	})
}

func decodeHTTP(b []byte, h *authv3.AttributeContext_HttpRequest) bool {
	headers := 0
	eachField(b, func(f field) bool {
		if f.num == 3 {
			headers++
		}
		return true
	})
	if headers > 0 {
		h.Headers = make(map[string]string, headers)
	}
	return eachField(b, func(f field) bool {
		if f.num == 9 {
			h.Size = int64(f.val)
			return f.typ == protowire.VarintType
		}
		if f.typ != protowire.BytesType {
			return false
		}
		switch f.num {
		case 3:
			return decodeEntry(f.data, &h.Headers)
		case 12:
			h.RawBody = nil
			if len(f.data) > 0 {
				h.RawBody = f.data[:len(f.data):len(f.data)]
			}
			return true
		case 13:
			return merge(f.data, &h.HeaderMap, httpDepth)
		}
		s, ok := str(f.data)
		switch f.num {
		case 1:
			h.Id = s
		case 2:
			h.Method = s
		case 4:
			h.Path = s
		case 5:
			h.Host = s
		case 6:
			h.Scheme = s
		case 7:
			h.Query = s
		case 8:
			h.Fragment = s
		case 10:
			h.Protocol = s
		case 11:
			h.Body = s
		default:
			return false
		}
		return ok
	})
}

// decodeEntry adds the map<string, string> entry b to *m.
func decodeEntry(b []byte, m *map[string]string) bool {
	var key, value string
	ok := eachField(b, func(f field) bool {
		var valid bool
		switch {
		case f.typ != protowire.BytesType:
			return false
		case f.num == 1:
			key, valid = str(f.data)
		case f.num == 2:
			value, valid = str(f.data)
		}
		return valid
	})
	if ok {
		if *m == nil {
			*m = make(map[string]string)
		}
		(*m)[key] = value
	}
	return ok
}

// merge decodes b with the protobuf library into *dst, allocating it if
// need be, as a message field at depth below the top is decoded.
func merge[T any, P interface {
	*T
	proto.Message
}](b []byte, dst *P, depth int) bool {
	if *dst == nil {
		*dst = new(T)
	}
	o := proto.UnmarshalOptions{Merge: true, RecursionLimit: protowire.DefaultRecursionLimit - depth}
	return o.Unmarshal(b, *dst) == nil
}

// str returns the proto3 string b, aliasing it, and whether it is valid
// UTF-8 as proto3 requires.
func str(b []byte) (string, bool) {
	return unsafe.String(unsafe.SliceData(b), len(b)), utf8.Valid(b)
}

// field is one field of an encoded message: a varint's value, or a
// length-delimited field's contents.
type field struct {
	num  protowire.Number
	typ  protowire.Type
	val  uint64
	data []byte
}

// eachField calls f with each field of the encoded message b, in order. It
// reports false if b holds a field other than a varint or length-delimited
// one, is malformed, or f returned false.
func eachField(b []byte, f func(field) bool) bool {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		fl := field{num: num, typ: typ}
		switch typ {
		case protowire.VarintType:
			fl.val, n = protowire.ConsumeVarint(b)
		case protowire.BytesType:
			fl.data, n = protowire.ConsumeBytes(b)
		default:
			return false
		}
		if n < 0 || !f(fl) {
			return false
		}
		b = b[n:]
	}
	return true
}
