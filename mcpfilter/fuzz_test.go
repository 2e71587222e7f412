package mcpfilter

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"
	sdkjson "github.com/segmentio/encoding/json"
)

// FuzzParse checks that Parse never panics and that whatever it accepts is
// read the same way by the decoders an upstream uses: encoding/json into the
// go-sdk's parameter structs, and the go-sdk's own decoding of the JSON-RPC
// message and of its params.
func FuzzParse(f *testing.F) {
	for _, tt := range rejectTests {
		if len(tt.body) < 4096 {
			f.Add([]byte(tt.body), tt.opts != nil && tt.opts.AllowBatch)
		}
	}
	for _, tt := range acceptTests {
		f.Add([]byte(tt.body), tt.opts != nil && tt.opts.AllowBatch)
	}
	f.Add(toolsCall2KB, false)
	// Escaped keys, escapes in values and numbers no float64 holds: where
	// two decoders are most likely to read one body two ways.
	for _, s := range []string{
		`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"\u006e\u0061me":"a__b","arguments":{"x\u0000y":1,"path":"\ud83d\ude00/\u2028"}}}`,
		`{"jsonrpc":"2.0","id":"\u0031","method":"tools/call","params":{"name":"a__b","arguments":{"n":-0,"m":1e400,"k":123456789012345678901234567890,"f":1.5E-7}}}`,
		`{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///a\/b","_meta":{"io.modelcontextprotocol/protocolVersion":"2025-06-18"}}}`,
		`{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"p","arguments":{"a":"\u0000","b":""}}}`,
		`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":{"a":{"b":[{"c":"d"}]}},"name":"a__b"}}`,
		`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a__b","arguments":{"s":"\\u0041\"\\"}}}`,
	} {
		f.Add([]byte(s), false)
	}
	f.Fuzz(func(t *testing.T, body []byte, allowBatch bool) {
		b, err := Parse(body, &Options{AllowBatch: allowBatch})
		if err != nil {
			checkError(t, body, err)
			return
		}
		if !utf8.Valid(body) || !json.Valid(body) {
			t.Fatalf("accepted a body that is not valid UTF-8 JSON: %q", body)
		}
		checkKeysIndependently(t, body)
		if !allowBatch && (b.Batch || len(b.Messages) != 1) {
			t.Fatalf("batch accepted without AllowBatch: %q", body)
		}
		if !b.Batch {
			checkSDKDecode(t, body, &b.Messages[0])
		}
		for i := range b.Messages {
			m := &b.Messages[i]
			checkAliases(t, body, m)
			checkArgs(t, m)
			switch m.Method {
			case "tools/call":
				checkToolsCall(t, m)
			case "prompts/get":
				checkPromptsGet(t, m)
			case "resources/read":
				checkResourcesRead(t, m)
			}
			checkMeta(t, m)
			checkIsError(t, m)
			checkSDKParams(t, m)
		}
	})
}

// checkKeysIndependently re-checks an accepted body with encoding/json's
// tokenizer and a plain pairwise strings.EqualFold, an oracle that shares no
// code with the parser's hashing: no object may hold two keys equal under
// folding, and nothing may nest deeper than the default limit.
func checkKeysIndependently(t *testing.T, body []byte) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(body))
	type frame struct {
		object    bool
		keys      []string
		expectKey bool
	}
	var stack []*frame
	for {
		tok, err := dec.Token()
		if err != nil {
			return
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if s, ok := tok.(string); ok && top != nil && top.object && top.expectKey {
			for _, k := range top.keys {
				if strings.EqualFold(k, s) {
					t.Fatalf("accepted keys %q and %q in one object", k, s)
				}
			}
			top.keys = append(top.keys, s)
			top.expectKey = false
			continue
		}
		if top != nil && top.object {
			top.expectKey = true
		}
		switch tok {
		case json.Delim('{'), json.Delim('['):
			stack = append(stack, &frame{object: tok == json.Delim('{'), expectKey: true})
			if len(stack) > DefaultMaxDepth {
				t.Fatalf("accepted nesting of %d", len(stack))
			}
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:len(stack)-1]
			if len(stack) > 0 && stack[len(stack)-1].object {
				stack[len(stack)-1].expectKey = true
			}
		}
	}
}

func checkError(t *testing.T, body []byte, err error) {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v is a %T", err, err)
	}
	if e.Reason == "" || e.Offset < 0 || e.Offset > len(body) {
		t.Fatalf("bad error %#v for %q", e, body)
	}
	if c := e.JSONRPCCode(); c != CodeParseError && c != CodeInvalidRequest && c != CodeInvalidParams {
		t.Fatalf("JSONRPCCode() = %d", c)
	}
	_ = err.Error()
}

// checkSDKDecode decodes the body as a go-sdk server would and compares.
func checkSDKDecode(t *testing.T, body []byte, m *Message) {
	t.Helper()
	msg, err := jsonrpc.DecodeMessage(body)
	if err != nil {
		// The SDK refuses some messages this package lets through for the
		// caller to decide (unknown methods are fine for both); what it
		// must never do is read a message we accept differently.
		return
	}
	switch msg := msg.(type) {
	case *jsonrpc.Request:
		if m.Kind == KindResponse || msg.Method != m.Method {
			t.Fatalf("SDK read method %q, Parse %q (kind %v)", msg.Method, m.Method, m.Kind)
		}
		if !bytes.Equal(msg.Params, m.Params) {
			t.Fatalf("SDK read params %q, Parse %q", msg.Params, m.Params)
		}
		if msg.IsCall() != (m.Kind == KindRequest) {
			t.Fatalf("SDK IsCall %v, Parse kind %v", msg.IsCall(), m.Kind)
		}
	case *jsonrpc.Response:
		if m.Kind != KindResponse {
			t.Fatalf("SDK read a response, Parse a %v", m.Kind)
		}
	}
	checkSDKID(t, msg, m)
}

// checkSDKID compares the id the SDK read with Parse's: a string, or an
// integer, which the SDK reads as a float64 and Parse holds to 2^53-1.
func checkSDKID(t *testing.T, msg jsonrpc.Message, m *Message) {
	t.Helper()
	var id jsonrpc.ID
	switch msg := msg.(type) {
	case *jsonrpc.Request:
		id = msg.ID
	case *jsonrpc.Response:
		id = msg.ID
	}
	var want any
	if m.ID != nil {
		dec := json.NewDecoder(bytes.NewReader(m.ID))
		dec.UseNumber()
		if err := dec.Decode(&want); err != nil {
			t.Fatalf("encoding/json cannot decode id %s: %v", m.ID, err)
		}
		if n, ok := want.(json.Number); ok {
			i, err := n.Int64()
			if err != nil {
				t.Fatalf("accepted id %s: %v", n, err)
			}
			want = i
		}
	}
	if got := id.Raw(); got != want {
		t.Fatalf("SDK read id %#v, Parse %s", got, m.ID)
	}
}

// sdkUnmarshal decodes data as the go-sdk decodes params: with
// segmentio/encoding/json, its struct fields matched case-sensitively.
func sdkUnmarshal(data []byte, v any, useNumber bool) error {
	dec := sdkjson.NewDecoder(bytes.NewReader(data))
	dec.DontMatchCaseInsensitiveStructFields()
	if useNumber {
		dec.UseNumber()
	}
	return dec.Decode(v)
}

// checkSDKParams reads params as a go-sdk server does and compares what
// the policy judges: tool or prompt name, arguments, resource URI and
// protocol version. Params the SDK refuses are no difference: the call
// fails there; what it must never do is read one the gateway accepted
// another way.
func checkSDKParams(t *testing.T, m *Message) {
	t.Helper()
	if m.Params == nil {
		return
	}
	var meta struct {
		Meta map[string]any `json:"_meta"`
	}
	if sdkUnmarshal(m.Params, &meta, true) == nil {
		if v, _ := meta.Meta[MetaProtocolVersionKey].(string); v != m.MetaProtocolVersion {
			t.Fatalf("SDK read protocol version %q, Parse %q", v, m.MetaProtocolVersion)
		}
	}
	switch m.Method {
	case "tools/call":
		var p mcp.CallToolParamsRaw
		if sdkUnmarshal(m.Params, &p, false) != nil {
			// As in checkToolsCall: a member the gateway does not
			// read may have the wrong type.
			var mirror struct {
				Name      string          `json:"name"`
				Arguments json.RawMessage `json:"arguments,omitempty"`
			}
			if sdkUnmarshal(m.Params, &mirror, false) != nil {
				return
			}
			p.Name, p.Arguments = mirror.Name, mirror.Arguments
		}
		if p.Name != m.Name {
			t.Fatalf("SDK read name %q, Parse %q", p.Name, m.Name)
		}
		if !bytes.Equal(p.Arguments, m.Arguments) {
			t.Fatalf("SDK read arguments %q, Parse %q", p.Arguments, m.Arguments)
		}
		if m.Arguments == nil {
			return
		}
		var got map[string]any
		if sdkUnmarshal(m.Arguments, &got, true) != nil {
			return
		}
		if want := m.Args.Any(); !reflect.DeepEqual(want, got) {
			t.Fatalf("SDK read other arguments (-Parse +SDK):\n%s", cmp.Diff(want, got))
		}
	case "prompts/get":
		var p struct {
			Name      string            `json:"name"`
			Arguments map[string]string `json:"arguments,omitempty"`
		}
		if sdkUnmarshal(m.Params, &p, false) != nil {
			return
		}
		if p.Name != m.Name {
			t.Fatalf("SDK read name %q, Parse %q", p.Name, m.Name)
		}
		if len(p.Arguments) != m.Args.Len() {
			t.Fatalf("SDK read %d prompt arguments, Parse %d", len(p.Arguments), m.Args.Len())
		}
		for a := m.Args.First(); a.Exists(); a = a.Next() {
			if s, _ := a.Str(); p.Arguments[a.Key()] != s {
				t.Fatalf("SDK read prompt argument %q = %q, Parse %q", a.Key(), p.Arguments[a.Key()], s)
			}
		}
	case "resources/read", "resources/subscribe", "resources/unsubscribe":
		var p struct {
			URI string `json:"uri"`
		}
		if sdkUnmarshal(m.Params, &p, false) != nil {
			return
		}
		if p.URI != m.URI {
			t.Fatalf("SDK read uri %q, Parse %q", p.URI, m.URI)
		}
	}
}

func checkAliases(t *testing.T, body []byte, m *Message) {
	t.Helper()
	for _, r := range []json.RawMessage{m.ID, m.Params, m.Arguments} {
		if r == nil {
			continue
		}
		if !within(body, r) {
			t.Fatalf("raw field %q does not alias the body", r)
		}
		if !json.Valid(r) {
			t.Fatalf("raw field %q is not valid JSON", r)
		}
	}
}

func within(body, sub []byte) bool {
	if len(sub) == 0 || len(body) == 0 {
		return false
	}
	for i := range body {
		if &body[i] == &sub[0] {
			return i+len(sub) <= len(body)
		}
	}
	return false
}

// checkArgs compares the Args tree with encoding/json decoding Arguments
// with UseNumber.
func checkArgs(t *testing.T, m *Message) {
	t.Helper()
	if m.Arguments == nil {
		if m.Args.Exists() {
			t.Fatalf("Args %v without Arguments", m.Args.Any())
		}
		return
	}
	dec := json.NewDecoder(bytes.NewReader(m.Arguments))
	dec.UseNumber()
	var want map[string]any
	if err := dec.Decode(&want); err != nil {
		t.Fatalf("encoding/json cannot decode accepted arguments %q: %v", m.Arguments, err)
	}
	// reflect.DeepEqual is linear in depth; cmp only explains a failure.
	if got := m.Args.Any(); !reflect.DeepEqual(want, got) {
		t.Fatalf("Args differ from encoding/json (-want +got):\n%s", cmp.Diff(want, got))
	}
	checkNavigation(t, m.Args, want)
}

// checkNavigation checks what Value's accessors say of v against want,
// its encoding/json decoding, one level down.
func checkNavigation(t *testing.T, v Value, want map[string]any) {
	t.Helper()
	if v.Kind() != Object || v.Len() != len(want) {
		t.Fatalf("Args is %s of %d members, want an object of %d", v.Kind(), v.Len(), len(want))
	}
	n := 0
	for m := v.First(); m.Exists(); m = m.Next() {
		n++
		w, ok := want[m.Key()]
		if !ok {
			t.Fatalf("member %q is not in the encoding/json decoding", m.Key())
		}
		if got := v.Member(m.Key()); !got.Exists() || got.i != m.i {
			t.Fatalf("Member(%q) is not the member First/Next reached", m.Key())
		}
		switch w := w.(type) {
		case string:
			if s, ok := m.Str(); !ok || s != w {
				t.Fatalf("member %q: Str() = %q, %v; want %q", m.Key(), s, ok, w)
			}
		case json.Number:
			if s, ok := m.Number(); !ok || s != w {
				t.Fatalf("member %q: Number() = %q, %v; want %q", m.Key(), s, ok, w)
			}
		case bool:
			if b, ok := m.Bool(); !ok || b != w {
				t.Fatalf("member %q: Bool() = %v, %v; want %v", m.Key(), b, ok, w)
			}
		case []any:
			if m.Kind() != Array || m.Len() != len(w) {
				t.Fatalf("member %q: %s of %d, want an array of %d", m.Key(), m.Kind(), m.Len(), len(w))
			}
		case map[string]any:
			checkNavigation(t, m, w)
		case nil:
			if m.Kind() != Null {
				t.Fatalf("member %q: %s, want null", m.Key(), m.Kind())
			}
		}
	}
	if n != len(want) {
		t.Fatalf("First/Next visited %d members, want %d", n, len(want))
	}
}

func checkToolsCall(t *testing.T, m *Message) {
	t.Helper()
	var p mcp.CallToolParams
	err := json.Unmarshal(m.Params, &p)
	var syntax *json.SyntaxError
	if errors.As(err, &syntax) {
		t.Fatalf("encoding/json: %v", err)
	}
	if err != nil && !isNumberRange(err) {
		// A member the gateway does not read (requestState,
		// inputResponses) has the wrong type; the upstream rejects the
		// call, but name and arguments must still read the same.
		var mirror struct {
			Name      string `json:"name"`
			Arguments any    `json:"arguments,omitempty"`
		}
		if err := json.Unmarshal(m.Params, &mirror); err != nil && !isNumberRange(err) {
			t.Fatalf("encoding/json cannot read name and arguments: %v", err)
		}
		p.Name, p.Arguments = mirror.Name, mirror.Arguments
	}
	if p.Name != m.Name {
		t.Fatalf("encoding/json read name %q, Parse %q", p.Name, m.Name)
	}
	var want any
	if m.Arguments != nil {
		if err := json.Unmarshal(m.Arguments, &want); err != nil && !isNumberRange(err) {
			t.Fatalf("encoding/json cannot decode Arguments: %v", err)
		}
	}
	if !reflect.DeepEqual(want, p.Arguments) {
		t.Fatalf("arguments differ (-Arguments +CallToolParams):\n%s", cmp.Diff(want, p.Arguments))
	}
}

// isNumberRange reports the error encoding/json gives for a number that
// does not fit a float64; it still decodes the rest, the same way each time.
func isNumberRange(err error) bool {
	var te *json.UnmarshalTypeError
	return errors.As(err, &te) && strings.HasPrefix(te.Value, "number")
}

func checkPromptsGet(t *testing.T, m *Message) {
	t.Helper()
	var p mcp.GetPromptParams
	if err := json.Unmarshal(m.Params, &p); err != nil {
		var mirror struct {
			Name      string            `json:"name"`
			Arguments map[string]string `json:"arguments,omitempty"`
		}
		if err := json.Unmarshal(m.Params, &mirror); err != nil {
			t.Fatalf("encoding/json cannot read name and arguments: %v", err)
		}
		p.Name, p.Arguments = mirror.Name, mirror.Arguments
	}
	if p.Name != m.Name {
		t.Fatalf("encoding/json read name %q, Parse %q", p.Name, m.Name)
	}
	var want map[string]string
	if m.Args.Exists() {
		want = make(map[string]string, m.Args.Len())
		for a := m.Args.First(); a.Exists(); a = a.Next() {
			s, ok := a.Str()
			if !ok {
				t.Fatalf("prompt argument %q is %s, not a string", a.Key(), a.Kind())
			}
			want[a.Key()] = s
		}
	}
	if !reflect.DeepEqual(want, p.Arguments) {
		t.Fatalf("prompt arguments differ (-Parse +encoding/json):\n%s", cmp.Diff(want, p.Arguments))
	}
}

func checkResourcesRead(t *testing.T, m *Message) {
	t.Helper()
	var p struct {
		URI string `json:"uri"`
	}
	if err := json.Unmarshal(m.Params, &p); err != nil {
		t.Fatalf("encoding/json cannot read uri: %v", err)
	}
	if p.URI != m.URI {
		t.Fatalf("encoding/json read uri %q, Parse %q", p.URI, m.URI)
	}
}

func checkMeta(t *testing.T, m *Message) {
	t.Helper()
	if m.Params == nil {
		return
	}
	var p struct {
		Meta map[string]any `json:"_meta"`
	}
	dec := json.NewDecoder(bytes.NewReader(m.Params))
	dec.UseNumber()
	if err := dec.Decode(&p); err != nil {
		t.Fatalf("encoding/json cannot read _meta: %v", err)
	}
	got, _ := p.Meta[MetaProtocolVersionKey].(string)
	if got != m.MetaProtocolVersion {
		t.Fatalf("encoding/json read protocol version %q, Parse %q", got, m.MetaProtocolVersion)
	}
	// A progress token is matched by value: it must be a string or an
	// integer a float64 holds exactly, under the one key that a struct
	// decoder, which folds case, would read it from.
	for k, v := range p.Meta {
		if !strings.EqualFold(k, "progressToken") {
			continue
		}
		if k != "progressToken" {
			t.Fatalf("accepted the progress token key %q", k)
		}
		switch v := v.(type) {
		case string:
		case json.Number:
			if n, err := v.Int64(); err != nil || n > 1<<53-1 || n < -(1<<53-1) {
				t.Fatalf("accepted progress token %s", v)
			}
		default:
			t.Fatalf("accepted progress token %v (%T)", v, v)
		}
	}
}

// FuzzSplitName checks that SplitName never panics and that what it accepts
// round-trips through JoinName and holds only allowed bytes.
func FuzzSplitName(f *testing.F) {
	for _, s := range []string{
		"notion__get_pages", "a___b", "a__b__c", "__x", "x__", "../etc__passwd", "fs__a/b",
		"fs__\u0430dmin", "fs__a\x00", "srv_x__tool", "a", "____", "a..__b", "A__B",
		strings.Repeat("s", 128) + "__" + strings.Repeat("t", 128),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		server, tool, err := SplitName(s)
		if err != nil {
			var e *NameError
			if !errors.As(err, &e) || e.Reason == "" || e.Index < -1 || e.Index >= len(s) {
				t.Fatalf("bad error %#v for %q", err, s)
			}
			return
		}
		if got := JoinName(server, tool); got != s {
			t.Fatalf("JoinName(SplitName(%q)) = %q", s, got)
		}
		if err := ValidateServerName(server); err != nil {
			t.Fatalf("split server %q invalid: %v", server, err)
		}
		if err := ValidateName(tool); err != nil {
			t.Fatalf("split tool %q invalid: %v", tool, err)
		}
		if strings.Contains(server, Separator) || strings.Contains(s, "..") {
			t.Fatalf("accepted %q", s)
		}
		for i := 0; i < len(s); i++ {
			if !nameByte[s[i]] {
				t.Fatalf("accepted byte %q in %q", s[i], s)
			}
		}
	})
}

// checkIsError holds IsError to what encoding/json finds in the result.
func checkIsError(t *testing.T, m *Message) {
	t.Helper()
	var result map[string]any
	if m.Result != nil {
		if err := json.Unmarshal(m.Result, &result); err != nil {
			t.Fatalf("result %s: %v", m.Result, err)
		}
	}
	if want := result["isError"] == true; m.IsError != want {
		t.Fatalf("IsError = %v for result %s", m.IsError, m.Result)
	}
}
