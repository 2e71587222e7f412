package mcpfilter

import (
	"bytes"
	"encoding/binary"
	"errors"
	"reflect"
	"strings"
	"testing"
	"unsafe"
)

// special8 must flag every block holding a byte strSafe rejects: check
// each such byte value at each of the eight positions, among safe bytes.
func TestSpecial8(t *testing.T) {
	for c := 0; c < 256; c++ {
		for pos := range 8 {
			block := []byte("abcdefgh")
			block[pos] = byte(c)
			got := special8(binary.LittleEndian.Uint64(block))
			if !strSafe[c] && !got {
				t.Errorf("byte %#x at %d not flagged", c, pos)
			}
			if strSafe[c] && got {
				t.Errorf("safe byte %#x at %d flagged", c, pos)
			}
		}
	}
}

// With ImmutableBody the strings in Args share the body, and are the same
// as without it.
func TestImmutableBody(t *testing.T) {
	body := []byte(`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a__b","arguments":{"q":"plain text","e":"caf\u00e9","n":12,"o":{"k":["x"]}}}}`)
	copied, err := Parse(body, nil)
	if err != nil {
		t.Fatal(err)
	}
	shared, err := Parse(body, &Options{ImmutableBody: true})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(copied.Messages[0].Args.Any(), shared.Messages[0].Args.Any()) {
		t.Errorf("args differ: %v vs %v", copied.Messages[0].Args, shared.Messages[0].Args)
	}
	q, _ := shared.Messages[0].Args.Member("q").Str()
	if unsafe.StringData(q) != &body[bytes.Index(body, []byte("plain text"))] {
		t.Error("with ImmutableBody, an unescaped string does not share the body")
	}
	if name := shared.Messages[0].Name; name != "a__b" || unsafe.StringData(name) != &body[bytes.Index(body, []byte("a__b"))] {
		t.Errorf("with ImmutableBody, the name %q does not share the body", name)
	}
	// Without it, nothing parsed changes with the body.
	body[bytes.Index(body, []byte("a__b"))] = 'z'
	if name := copied.Messages[0].Name; name != "a__b" {
		t.Errorf("the name changed with the body to %q", name)
	}
	// An escaped string is decoded either way.
	escaped := []byte(`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a\u005f_b","arguments":{}}}`)
	for _, o := range []*Options{nil, {ImmutableBody: true}} {
		if m, err := Parse(escaped, o); err != nil || m.Messages[0].Name != "a__b" {
			t.Errorf("escaped name with %+v: %v, %v", o, m, err)
		}
	}
}

// SkipArgs gives the same message as a full parse, but no Args, and
// arguments that are not valid JSON, or not what MCP allows, still fail.
func TestSkipArgs(t *testing.T) {
	for _, body := range [][]byte{toolsCall2KB, toolsCallSmall,
		[]byte(`{"jsonrpc":"2.0","id":"x","method":"prompts/get","params":{"name":"s__p","arguments":{"a":"b"}}}`)} {
		full, err := Parse(body, nil)
		if err != nil {
			t.Fatal(err)
		}
		skipped, err := Parse(body, &Options{SkipArgs: true})
		if err != nil {
			t.Fatal(err)
		}
		f, s := full.Messages[0], skipped.Messages[0]
		if s.Args.Exists() {
			t.Errorf("%.40s: SkipArgs built Args %v", body, s.Args.Any())
		}
		if !bytes.Equal(f.Arguments, s.Arguments) || f.Name != s.Name || !bytes.Equal(f.ID, s.ID) || f.IDSpan != s.IDSpan ||
			f.NameSpan != s.NameSpan || f.Method != s.Method || f.Kind != s.Kind {
			t.Errorf("%.40s: SkipArgs parsed differently:\n%+v\n%+v", body, f, s)
		}
	}
	for _, args := range []string{`{"a":1,"a":2}`, `{"a":{"b":1,"b":2}}`, `{"a":}`, `null`, `[1]`, `"s"`, `{"a":"\ud800"}`} {
		body := []byte(`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a__b","arguments":` + args + `}}`)
		_, full := Parse(body, nil)
		_, skipped := Parse(body, &Options{SkipArgs: true})
		if full == nil || skipped == nil {
			t.Errorf("arguments %s: full parse error %v, SkipArgs error %v; want both refused", args, full, skipped)
		}
	}
}

func TestCompletionReferences(t *testing.T) {
	for _, tt := range []struct {
		body, refType, name, uri string
	}{
		{`{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"s__p"},"argument":{"name":"a","value":"x"}}}`, RefPrompt, "s__p", ""},
		{`{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/resource","uri":"amg:s:t://x/{id}"},"argument":{"name":"id","value":"1"}}}`, RefResource, "", "amg:s:t://x/{id}"},
	} {
		b, err := Parse([]byte(tt.body), nil)
		if err != nil {
			t.Fatalf("%s: %v", tt.body, err)
		}
		if m := b.Messages[0]; m.RefType != tt.refType || m.Name != tt.name || m.URI != tt.uri {
			t.Errorf("%s: got %q %q %q", tt.body, m.RefType, m.Name, m.URI)
		}
	}
	for _, tt := range []struct{ body, want string }{
		{`{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"argument":{"name":"a","value":"x"}}}`, "completion/complete requires params.ref"},
		{`{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/tool","name":"x"}}}`, "params.ref must be a ref/prompt with a name or a ref/resource with a uri"},
		{`{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt"}}}`, "params.ref must be a ref/prompt with a name or a ref/resource with a uri"},
		{`{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"a","Name":"b"}}}`, "case"},
		{`{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":"s__p"}}`, "ref must be an object"},
	} {
		if _, err := Parse([]byte(tt.body), nil); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err = %v, want one containing %q", tt.body, err, tt.want)
		}
	}
}

// A request whose params are wrong is named by the error when its id was
// read first; a body whose id is unknown, or that is no valid request, or
// a batch, leaves the error's id nil (the answer's id is then null).
func TestErrorNamesTheRequest(t *testing.T) {
	for _, tt := range []struct {
		name, body, id string
	}{
		{"params wrong, id first", `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":5}}`, `7`},
		{"string id", `{"jsonrpc":"2.0","id":"a-1","method":"tools/call","params":{"name":"a__b","arguments":[]}}`, `"a-1"`},
		{"params before method", `{"jsonrpc":"2.0","id":8,"params":{"name":5},"method":"tools/call"}`, `8`},
		{"params before id", `{"jsonrpc":"2.0","method":"tools/call","params":{"name":5},"id":9}`, ``},
		{"invalid request", `{"jsonrpc":"1.0","id":7,"method":"tools/call","params":{}}`, ``},
		{"parse error", `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"a__b","arguments":{"q":"\ud800"}}}`, ``},
		{"no id", `{"jsonrpc":"2.0","method":"tools/call","params":{"name":5}}`, ``},
		{"batch", `[{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":5}}]`, ``},
	} {
		_, err := Parse([]byte(tt.body), &Options{AllowBatch: true})
		var e *Error
		if !errors.As(err, &e) {
			t.Fatalf("%s: %v, want an *Error", tt.name, err)
		}
		if string(e.ID) != tt.id {
			t.Errorf("%s: error id %q, want %q (%v)", tt.name, e.ID, tt.id, err)
		}
	}
}
