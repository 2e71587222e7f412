// Package mcpfilter parses MCP JSON-RPC request bodies strictly, once, so
// that what the gateway decides on is byte-for-byte what the upstream
// receives.
//
// Anything two JSON decoders could read differently is rejected rather than
// resolved: duplicate keys, keys that differ only by case, invalid UTF-8,
// unpaired surrogates, trailing data. It also provides the strict
// server__tool namespacing agents see (see [SplitName]).
package mcpfilter

import (
	"bytes"
	"encoding/json"
	"strconv"
	"sync"
)

// Kind is the kind of a JSON-RPC message.
type Kind uint8

const (
	// KindRequest has a method and an id.
	KindRequest Kind = iota + 1
	// KindNotification has a method and no id.
	KindNotification
	// KindResponse is a client's reply to a request the server sent it
	// (sampling, elicitation, roots): an id and a result or an error, no
	// method.
	KindResponse
)

func (k Kind) String() string {
	switch k {
	case KindRequest:
		return "request"
	case KindNotification:
		return "notification"
	case KindResponse:
		return "response"
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// MetaProtocolVersionKey is the params._meta key that carries the protocol
// version on every request from protocol 2026-07-28 on.
const MetaProtocolVersionKey = "io.modelcontextprotocol/protocolVersion"

// Message is one JSON-RPC message of a body. Its json.RawMessage fields are
// sub-slices of the body given to [Parse]: they are the exact bytes the
// upstream will receive, and they change if the caller changes the body.
type Message struct {
	Kind Kind
	// ID is the exact id bytes (a JSON string or integer); nil for
	// notifications.
	ID json.RawMessage
	// Method is empty for responses.
	Method string
	// Params is the exact params bytes (always an object), nil if absent.
	Params json.RawMessage

	// Name is params.name of tools/call and prompts/get.
	Name string
	// Arguments is the exact bytes of params.arguments of tools/call and
	// prompts/get (always an object), nil if absent.
	Arguments json.RawMessage
	// Args is Arguments parsed: an Object, or Absent if Arguments is nil
	// or Options.SkipArgs was set.
	Args Value

	// URI is params.uri of resources/read, resources/subscribe and
	// resources/unsubscribe.
	URI string

	// RefType is the completion reference's type for completion/complete:
	// RefPrompt, whose name is then in Name, or RefResource, whose URI is
	// then in URI.
	RefType string

	// MetaProtocolVersion is params._meta[MetaProtocolVersionKey], "" if
	// absent.
	MetaProtocolVersion string

	// Result and Error are the exact bytes of a response's result or error
	// object; nil if absent.
	Result, Error json.RawMessage
	// IsError is whether Result has a member "isError" whose value is
	// true, as a tools/call result has when the tool failed.
	IsError bool

	// IDSpan and NameSpan locate the id token and the params.name string
	// token (quotes included) in the body, for a caller that rewrites
	// them and keeps every other byte; zero when absent. MetaSpan
	// locates the params._meta object likewise.
	IDSpan, NameSpan, MetaSpan Span
}

// Span is the byte range [Start, End) of a token in the body given to
// Parse.
type Span struct{ Start, End int }

// Len is the length of the span; 0 for an absent token.
func (s Span) Len() int { return s.End - s.Start }

// Body is a parsed request body.
//
// A batch is forwarded as one body, so the caller must decide every message
// of it and deny the whole batch if it denies any one: the gateway cannot
// forward part of the bytes it was sent.
type Body struct {
	Messages []Message
	// Batch reports that the body was a JSON array (allowed only with
	// Options.AllowBatch).
	Batch bool
}

// single holds a Body and its only message in one allocation, for the
// common single-message body.
type single struct {
	body Body
	msg  [1]Message
}

// Limits applied when Options leaves them zero.
const (
	DefaultMaxBytes = 1 << 20
	DefaultMaxDepth = 64
)

// Options configures [Parse]. A nil *Options is the zero value.
type Options struct {
	// MaxBytes is the largest body accepted; 0 (or less) means
	// DefaultMaxBytes.
	MaxBytes int
	// MaxDepth is the deepest nesting of objects and arrays accepted,
	// counting the message object as 1; 0 (or less) means DefaultMaxDepth.
	MaxDepth int
	// AllowBatch accepts a JSON array of messages. Only protocol 2025-03-26
	// has batches; the caller sets this from the negotiated version.
	AllowBatch bool
	// ImmutableBody promises that the body's bytes are never modified
	// after Parse, so the strings of the messages and their Args may share
	// them instead of a copy. Leave it false unless the caller owns the
	// buffer outright.
	ImmutableBody bool
	// SkipArgs validates the arguments of tools/call and prompts/get as
	// any other JSON but does not build Args: for a caller that only
	// routes a message whose arguments were already decided on.
	SkipArgs bool
}

// Parse validates body as one JSON-RPC message, or a batch of them, under
// the rules of this package and extracts what the gateway decides on. The
// returned Body aliases body. Every error is an *[Error].
func Parse(body []byte, opts *Options) (*Body, error) {
	if opts == nil {
		opts = &Options{}
	}
	maxBytes, maxDepth := opts.MaxBytes, opts.MaxDepth
	if maxBytes <= 0 {
		maxBytes = DefaultMaxBytes
	}
	if maxDepth <= 0 {
		maxDepth = DefaultMaxDepth
	}
	// Checked before scanning so that an oversized body costs nothing.
	if len(body) > maxBytes {
		return nil, &Error{
			Reason: ReasonTooLarge,
			Offset: maxBytes,
			detail: "body of " + strconv.Itoa(len(body)) + " bytes exceeds the limit of " + strconv.Itoa(maxBytes) + " bytes",
		}
	}
	p := parserPool.Get().(*parser)
	p.data, p.pos, p.maxDepth, p.immutable, p.skipArgs = body, 0, maxDepth, opts.ImmutableBody, opts.SkipArgs
	b, err := p.body(opts.AllowBatch)
	if err == nil && len(p.tape) > 0 {
		t := p.takeTape()
		for i := range b.Messages {
			if m := &b.Messages[i]; m.Arguments != nil {
				m.Args.tape = t
			}
		}
	}
	p.release()
	if e, ok := err.(*Error); ok {
		return nil, e.finish()
	}
	if err != nil {
		return nil, err
	}
	return b, nil
}

// Parsers are pooled for their stacks and scratch buffer, which would
// otherwise be allocated on every request.
var parserPool = sync.Pool{New: func() any { return new(parser) }}

// maxPooledStack bounds the stacks a pooled parser keeps, so that one huge
// body does not pin its memory for good.
const maxPooledStack = 1024

func (p *parser) release() {
	// The key stack is cleared as it shrinks, except after an error, and
	// the tape holds strings of the body: neither may keep the body alive
	// from the pool.
	clear(p.keys)
	clear(p.tape)
	p.keys, p.tape = p.keys[:0], p.tape[:0]
	if cap(p.keys) > maxPooledStack || cap(p.tape) > maxPooledStack || cap(p.scratch) > 64*maxPooledStack {
		return
	}
	p.scratch = p.scratch[:0]
	p.data, p.argStr, p.argBase = nil, "", 0
	parserPool.Put(p)
}

func (p *parser) body(allowBatch bool) (*Body, error) {
	p.skipWS()
	if p.pos >= len(p.data) {
		return nil, p.errAt(ReasonInvalidJSON, p.pos, "empty body")
	}
	var b *Body
	switch p.data[p.pos] {
	case '{':
		s := &single{}
		if err := p.message(1, &s.msg[0]); err != nil {
			if e, ok := err.(*Error); ok && e.JSONRPCCode() == CodeInvalidParams && s.msg[0].ID != nil {
				e.ID = bytes.Clone(s.msg[0].ID)
			}
			return nil, err
		}
		s.body.Messages = s.msg[:]
		b = &s.body
	case '[':
		if !allowBatch {
			return nil, p.errAt(ReasonBatchNotAllowed, p.pos, "JSON-RPC batches are not allowed in this protocol version")
		}
		msgs, err := p.batch()
		if err != nil {
			return nil, err
		}
		b = &Body{Messages: msgs, Batch: true}
	default:
		err := p.wrongType(0, ReasonInvalidRequest, "body must be a JSON-RPC message object")
		if err.(*Error).Reason == ReasonInvalidRequest {
			// Garbage after a valid scalar is still a parse error.
			if p.skipWS(); p.pos < len(p.data) {
				return nil, p.trailing()
			}
		}
		return nil, err
	}
	p.skipWS()
	if p.pos < len(p.data) {
		return nil, p.trailing()
	}
	return b, nil
}

func (p *parser) trailing() error {
	if err := p.unexpected("end of input"); err.(*Error).Reason == ReasonInvalidUTF8 {
		return err
	}
	return p.errAt(ReasonTrailingData, p.pos, "unexpected data after the top-level value")
}

func (p *parser) batch() ([]Message, error) {
	open := p.pos
	empty, err := p.beginArray(1)
	if err != nil {
		return nil, err
	}
	if empty {
		return nil, p.errAt(ReasonEmptyBatch, open, "empty batch")
	}
	msgs := make([]Message, 0, 4)
	for i := 0; ; i++ {
		msgs = append(msgs, Message{})
		var err error
		if p.pos < len(p.data) && p.data[p.pos] == '{' {
			err = p.message(2, &msgs[i])
		} else {
			err = p.wrongType(1, ReasonInvalidRequest, "batch element must be a JSON-RPC message object")
		}
		if err != nil {
			return nil, withIndex(err, i)
		}
		more, err := p.arrayNext()
		if err != nil {
			return nil, err
		}
		if !more {
			return msgs, nil
		}
	}
}

// envelopeFields is the closed key set of a JSON-RPC 2.0 message.
var envelopeFields = []string{"jsonrpc", "id", "method", "params", "result", "error"}

const (
	hasJSONRPC = 1 << iota
	hasID
	hasMethod
	hasParams
	hasResult
	hasError
)

// message parses the message object at p.pos, at the given depth, into m.
func (p *parser) message(depth int, m *Message) error {
	start := p.pos
	ks, err := p.beginObject(depth)
	if err != nil {
		return err
	}
	var has, found int
	paramsStart := -1
	var spec *paramSpec
	for {
		k, ok, err := p.nextKey(&ks)
		if !ok {
			if err != nil {
				return err
			}
			break
		}
		var bit int
		switch string(k.dec) {
		case "jsonrpc":
			bit, err = hasJSONRPC, p.jsonrpc(depth)
		case "id":
			bit, err = hasID, p.id(depth, m)
		case "method":
			bit, err = hasMethod, p.method(depth, m)
		case "params":
			bit, paramsStart = hasParams, p.pos
			switch {
			case p.pos >= len(p.data) || p.data[p.pos] != '{':
				err = p.wrongType(depth, ReasonInvalidParams, "params must be an object")
			case has&hasMethod != 0:
				spec = specFor(m.Method)
				found, err = p.params(depth+1, m, spec)
			default:
				// The method comes later; validate now, extract below.
				err = p.skipObject(depth + 1)
			}
			if err == nil {
				m.Params = p.data[paramsStart:p.pos]
			}
		case "result", "error":
			bit = hasResult
			if k.dec[0] == 'e' {
				bit = hasError
			}
			if p.pos < len(p.data) && p.data[p.pos] == '{' {
				at := p.pos
				var isError *bool
				if bit == hasResult {
					isError = &m.IsError
				}
				if err = p.skipObjectNoting(depth+1, isError); err == nil {
					if bit == hasResult {
						m.Result = p.data[at:p.pos]
					} else {
						m.Error = p.data[at:p.pos]
					}
				}
			} else {
				err = p.wrongType(depth, ReasonInvalidRequest, string(k.dec)+" must be an object")
			}
		default:
			if f := foldMatch(k.dec, envelopeFields); f != "" {
				return p.caseVariant(k, f)
			}
			return p.errAt(ReasonUnknownField, k.off, "unknown key "+quote(string(k.dec))+" in JSON-RPC message")
		}
		if err != nil {
			return withKey(err, k.dec)
		}
		has |= bit
	}
	if has&hasJSONRPC == 0 {
		return p.errAt(ReasonInvalidJSONRPCVersion, start, `missing "jsonrpc" member`)
	}
	switch {
	case has&hasMethod != 0:
		if has&(hasResult|hasError) != 0 {
			return p.errAt(ReasonInvalidRequest, start, "message has both a method and a result or error")
		}
		m.Kind = KindNotification
		if has&hasID != 0 {
			m.Kind = KindRequest
		}
		if has&hasParams != 0 && spec == nil {
			end := p.pos
			p.pos = paramsStart
			spec = specFor(m.Method)
			var err error
			found, err = p.params(depth+1, m, spec)
			p.pos = end
			if err != nil {
				return withKey(err, []byte("params"))
			}
		}
		if spec == nil {
			spec = specFor(m.Method)
		}
		return p.required(m, spec, found, start, paramsStart)
	case has&hasResult != 0 && has&hasError != 0:
		return p.errAt(ReasonInvalidRequest, start, "message has both a result and an error")
	case has&(hasResult|hasError) == 0:
		return p.errAt(ReasonInvalidRequest, start, "message has no method, result or error")
	case has&hasID == 0:
		return p.errAt(ReasonInvalidID, start, "response has no id")
	case has&hasParams != 0:
		return p.errAt(ReasonInvalidRequest, start, "response must not have params")
	}
	m.Kind = KindResponse
	return nil
}

func (p *parser) caseVariant(k keyTok, field string) error {
	return p.errAt(ReasonCaseVariantField, k.off,
		"key "+quote(string(k.dec))+" is a case variant of the field "+quote(field))
}

func (p *parser) jsonrpc(depth int) error {
	const detail = `jsonrpc must be "2.0"`
	if p.pos >= len(p.data) || p.data[p.pos] != '"' {
		return p.wrongType(depth, ReasonInvalidJSONRPCVersion, detail)
	}
	start := p.pos
	v, err := p.str()
	if err != nil {
		return err
	}
	if string(v) != "2.0" {
		return p.errAt(ReasonInvalidJSONRPCVersion, start, detail)
	}
	return nil
}

// maxSafeID is the largest integer id or progress token accepted: beyond
// 2^53-1 a JSON number no longer round-trips through the float64 that
// JavaScript and the Go SDK decode them into, so the upstream could answer
// a different id, or report progress under a different token.
const maxSafeID = 1<<53 - 1

func (p *parser) id(depth int, m *Message) error {
	start := p.pos
	if p.pos < len(p.data) && p.data[p.pos] == 'n' {
		return p.wrongType(depth, ReasonInvalidID, "id must not be null")
	}
	if err := p.stringOrInteger(depth, ReasonInvalidID, "id"); err != nil {
		return err
	}
	m.ID, m.IDSpan = p.data[start:p.pos], Span{start, p.pos}
	return nil
}

// stringOrInteger consumes the value at p.pos, which field requires to be
// a string or an integer of at most maxSafeID in magnitude, as the
// protocol's ids and progress tokens are.
func (p *parser) stringOrInteger(depth int, r Reason, field string) error {
	start := p.pos
	if p.pos >= len(p.data) {
		return p.unexpected("a value")
	}
	switch c := p.data[p.pos]; {
	case c == '"':
		_, _, _, err := p.scanString()
		return err
	case c == '-' || isDigit(c):
		integer, err := p.scanNumber()
		if err != nil {
			return err
		}
		if !integer {
			return p.errAt(r, start, field+" must be an integer, without fraction or exponent")
		}
		if !safeInteger(p.data[start:p.pos]) {
			return p.errAt(r, start, field+" must be an integer between -(2^53-1) and 2^53-1")
		}
		return nil
	}
	return p.wrongType(depth, r, field+" must be a string or an integer")
}

func safeInteger(b []byte) bool {
	if b[0] == '-' {
		b = b[1:]
	}
	if len(b) > 16 {
		return false
	}
	var n uint64
	for _, c := range b {
		n = n*10 + uint64(c-'0')
	}
	return n <= maxSafeID
}

func (p *parser) method(depth int, m *Message) error {
	if p.pos >= len(p.data) || p.data[p.pos] != '"' {
		return p.wrongType(depth, ReasonInvalidMethod, "method must be a string")
	}
	start := p.pos
	v, err := p.str()
	if err != nil {
		return err
	}
	if len(v) == 0 {
		return p.errAt(ReasonInvalidMethod, start, "method must not be empty")
	}
	m.Method = internMethod(v)
	return nil
}

// internMethod returns the known method names without allocating.
func internMethod(b []byte) string {
	switch string(b) {
	case "tools/call":
		return "tools/call"
	case "tools/list":
		return "tools/list"
	case "initialize":
		return "initialize"
	case "notifications/initialized":
		return "notifications/initialized"
	case "ping":
		return "ping"
	case "prompts/get":
		return "prompts/get"
	case "prompts/list":
		return "prompts/list"
	case "resources/read":
		return "resources/read"
	case "resources/list":
		return "resources/list"
	case "resources/templates/list":
		return "resources/templates/list"
	case "resources/subscribe":
		return "resources/subscribe"
	case "resources/unsubscribe":
		return "resources/unsubscribe"
	case "completion/complete":
		return "completion/complete"
	case "logging/setLevel":
		return "logging/setLevel"
	case "notifications/cancelled":
		return "notifications/cancelled"
	case "notifications/progress":
		return "notifications/progress"
	case "notifications/roots/list_changed":
		return "notifications/roots/list_changed"
	case "server/discover":
		return "server/discover"
	case "subscriptions/listen":
		return "subscriptions/listen"
	}
	return string(b)
}
