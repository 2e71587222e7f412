package mcpfilter

import (
	"bytes"
	"encoding/binary"
	"reflect"
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
	if !reflect.DeepEqual(copied.Messages[0].Args, shared.Messages[0].Args) {
		t.Errorf("args differ: %v vs %v", copied.Messages[0].Args, shared.Messages[0].Args)
	}
	q := shared.Messages[0].Args["q"].(string)
	if unsafe.StringData(q) != &body[bytes.Index(body, []byte("plain text"))] {
		t.Error("with ImmutableBody, an unescaped string does not share the body")
	}
}
