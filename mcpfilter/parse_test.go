package mcpfilter

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// call prefixes a tools/call request up to the value of params.arguments.
const call = `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"gh__search","arguments":`

func nested(depth int) string {
	return strings.Repeat("[", depth) + strings.Repeat("]", depth)
}

var rejectTests = []struct {
	name   string
	body   string
	opts   *Options
	reason Reason
	msg    string
}{
	// Syntax.
	{"empty body", ``, nil, ReasonInvalidJSON, `empty body at offset 0`},
	{"only whitespace", " \n\t ", nil, ReasonInvalidJSON, `empty body at offset 4`},
	{"truncated object", `{"jsonrpc":"2.0"`, nil, ReasonInvalidJSON, `unexpected end of input, expected ',' or '}' after object member at offset 16`},
	{"truncated after brace", `{`, nil, ReasonInvalidJSON, `unexpected end of input, expected a string key or '}' at offset 1`},
	{"trailing comma in object", `{"jsonrpc":"2.0",}`, nil, ReasonInvalidJSON, `expected a string key at offset 17`},
	{"missing colon", `{"jsonrpc" "2.0"}`, nil, ReasonInvalidJSON, `expected ':' after object key at offset 11`},
	{"missing comma", `{"jsonrpc":"2.0" "id":1}`, nil, ReasonInvalidJSON, `expected ',' or '}' after object member at offset 17`},
	{"single-quoted key", `{'jsonrpc':"2.0"}`, nil, ReasonInvalidJSON, `expected a string key or '}' at offset 1`},
	{"leading zero", `{"jsonrpc":"2.0","id":01}`, nil, ReasonInvalidJSON, `expected ',' or '}' after object member at offset 23`},
	{"bare minus", `{"jsonrpc":"2.0","id":-}`, nil, ReasonInvalidJSON, `invalid number at offset 22 (id)`},
	{"fraction without digits", call + `{"a":1.}}}`, nil, ReasonInvalidJSON, `invalid number at offset 93 (params.arguments.a)`},
	{"exponent without digits", call + `{"a":1e+}}}`, nil, ReasonInvalidJSON, `invalid number at offset 93 (params.arguments.a)`},
	{"bad literal", call + `{"a":tru}}}`, nil, ReasonInvalidJSON, `invalid literal at offset 93 (params.arguments.a)`},
	{"NaN", call + `{"a":NaN}}}`, nil, ReasonInvalidJSON, `expected a value at offset 93 (params.arguments.a)`},
	{"plus sign", call + `{"a":+1}}}`, nil, ReasonInvalidJSON, `expected a value at offset 93 (params.arguments.a)`},
	{"trailing comma in array", call + `{"a":[1,]}}}`, nil, ReasonInvalidJSON, `expected a value at offset 96 (params.arguments.a[1])`},
	{"missing comma in array", call + `{"a":[1 2]}}}`, nil, ReasonInvalidJSON, `expected ',' or ']' after array element at offset 96 (params.arguments.a)`},
	{"unterminated string", call + `{"a":"abc}}}`, nil, ReasonInvalidJSON, `unterminated string at offset 93 (params.arguments.a)`},
	{"unterminated escape", `{"jsonrpc":"2.0","id":"\`, nil, ReasonInvalidJSON, `unterminated string at offset 22 (id)`},
	{"byte order mark", "\ufeff{}", nil, ReasonInvalidJSON, `expected a value at offset 0`},

	// Encoding.
	{"invalid UTF-8 in string", call + "{\"a\":\"x\xffy\"}}}", nil, ReasonInvalidUTF8, `invalid UTF-8 in string at offset 95 (params.arguments.a)`},
	{"invalid UTF-8 in key", call + "{\"\xff\":1}}}", nil, ReasonInvalidUTF8, `invalid UTF-8 in string at offset 90 (params.arguments)`},
	{"overlong UTF-8", call + "{\"a\":\"\xc0\xaf\"}}}", nil, ReasonInvalidUTF8, `invalid UTF-8 in string at offset 94 (params.arguments.a)`},
	{"UTF-8 encoded surrogate", call + "{\"a\":\"\xed\xa0\x80\"}}}", nil, ReasonInvalidUTF8, `invalid UTF-8 in string at offset 94 (params.arguments.a)`},
	{"truncated UTF-8 sequence", call + "{\"a\":\"\xe2\x82\"}}}", nil, ReasonInvalidUTF8, `invalid UTF-8 in string at offset 94 (params.arguments.a)`},
	{"invalid UTF-8 outside strings", "{\"jsonrpc\":\"2.0\"\xfe}", nil, ReasonInvalidUTF8, `invalid UTF-8 outside a string at offset 16`},
	{"invalid UTF-8 after body", "{\"jsonrpc\":\"2.0\",\"method\":\"ping\"}\x80", nil, ReasonInvalidUTF8, `invalid UTF-8 outside a string at offset 33`},
	{"unknown escape", call + `{"a":"\x"}}}`, nil, ReasonInvalidEscape, `invalid escape sequence in string at offset 94 (params.arguments.a)`},
	{"bad hex in \\u", call + `{"a":"\u12G4"}}}`, nil, ReasonInvalidEscape, `invalid \u escape in string at offset 94 (params.arguments.a)`},
	{"short \\u", call + `{"a":"\u12"}}}`, nil, ReasonInvalidEscape, `invalid \u escape in string at offset 94 (params.arguments.a)`},
	{"bad hex in low surrogate", call + `{"a":"\ud800\uZZZZ"}}}`, nil, ReasonInvalidEscape, `invalid \u escape in string at offset 100 (params.arguments.a)`},
	{"lone high surrogate", call + `{"a":"\ud800"}}}`, nil, ReasonInvalidSurrogate, `high surrogate in \u escape is not followed by a low surrogate at offset 94 (params.arguments.a)`},
	{"high surrogate then text", call + `{"a":"\uD800x"}}}`, nil, ReasonInvalidSurrogate, `high surrogate in \u escape is not followed by a low surrogate at offset 94 (params.arguments.a)`},
	{"high surrogate then BMP escape", call + `{"a":"\ud800\u0041"}}}`, nil, ReasonInvalidSurrogate, `high surrogate in \u escape is not followed by a low surrogate at offset 94 (params.arguments.a)`},
	{"two high surrogates", call + `{"a":"\ud800\ud800"}}}`, nil, ReasonInvalidSurrogate, `high surrogate in \u escape is not followed by a low surrogate at offset 94 (params.arguments.a)`},
	{"high surrogate then escape past the low ones", call + `{"a":"\uD800\uE000"}}}`, nil, ReasonInvalidSurrogate, `high surrogate in \u escape is not followed by a low surrogate at offset 94 (params.arguments.a)`},
	{"lone low surrogate", call + `{"a":"\udc00"}}}`, nil, ReasonInvalidSurrogate, `unpaired low surrogate in \u escape at offset 94 (params.arguments.a)`},
	{"surrogate in key", call + `{"\udfff":1}}}`, nil, ReasonInvalidSurrogate, `unpaired low surrogate in \u escape at offset 90 (params.arguments)`},
	{"raw tab in string", call + "{\"a\":\"x\ty\"}}}", nil, ReasonControlInString, `unescaped control character in string at offset 95 (params.arguments.a)`},
	{"raw newline in string", call + "{\"a\":\"x\ny\"}}}", nil, ReasonControlInString, `unescaped control character in string at offset 95 (params.arguments.a)`},
	{"raw U+001F in string", call + "{\"a\":\"x\x1fy\"}}}", nil, ReasonControlInString, `unescaped control character in string at offset 95 (params.arguments.a)`},
	{"raw NUL in key", call + "{\"a\x00\":1}}}", nil, ReasonControlInString, `unescaped control character in string at offset 91 (params.arguments)`},

	// Trailing data.
	{"second object", `{"jsonrpc":"2.0","method":"ping"} {}`, nil, ReasonTrailingData, `unexpected data after the top-level value at offset 34`},
	{"garbage", `{"jsonrpc":"2.0","method":"ping"}x`, nil, ReasonTrailingData, `unexpected data after the top-level value at offset 33`},
	{"NUL after body", "{\"jsonrpc\":\"2.0\",\"method\":\"ping\"}\x00", nil, ReasonTrailingData, `unexpected data after the top-level value at offset 33`},
	{"extra closing brace", call + `{}}}}`, nil, ReasonTrailingData, `unexpected data after the top-level value at offset 92`},
	{"garbage after scalar", `1 2`, nil, ReasonTrailingData, `unexpected data after the top-level value at offset 2`},

	// Limits.
	{"too large", `{"jsonrpc":"2.0","method":"ping"}`, &Options{MaxBytes: 32}, ReasonTooLarge, `body of 33 bytes exceeds the limit of 32 bytes at offset 32`},
	{"too large by default", `"` + strings.Repeat("a", DefaultMaxBytes) + `"`, nil, ReasonTooLarge, `body of 1048578 bytes exceeds the limit of 1048576 bytes at offset 1048576`},
	{"too deep by default", call + `{"a":` + nested(62) + `}}}`, nil, ReasonTooDeep, `nesting deeper than 64 levels at offset 154 (params.arguments.a[0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0])`},
	{"too deep objects", call + `{"a":{"b":{}}}}}`, &Options{MaxDepth: 4}, ReasonTooDeep, `nesting deeper than 4 levels at offset 98 (params.arguments.a.b)`},
	{"too deep batch", `[{"jsonrpc":"2.0","method":"ping"}]`, &Options{MaxDepth: 1, AllowBatch: true}, ReasonTooDeep, `nesting deeper than 1 levels at offset 1 ([0])`},

	// Duplicate keys.
	{"duplicate envelope key", `{"jsonrpc":"2.0","method":"ping","method":"tools/call"}`, nil, ReasonDuplicateKey, `duplicate key "method" at offset 33`},
	{"duplicate params key", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a__b","name":"a__c"}}`, nil, ReasonDuplicateKey, `duplicate key "name" at offset 70 (params)`},
	{"escaped duplicate params key", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a__b","\u006e\u0061me":"a__c"}}`, nil, ReasonDuplicateKey, `duplicate key "name" at offset 70 (params)`},
	{"duplicate in _meta", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a__b","_meta":{"a":1,"a":2}}}`, nil, ReasonDuplicateKey, `duplicate key "a" at offset 85 (params._meta)`},
	{"duplicate argument", call + `{"limit":1,"limit":1000}}}`, nil, ReasonDuplicateKey, `duplicate key "limit" at offset 99 (params.arguments)`},
	{"duplicate after escape", call + `{"a":1,"\u0061":2}}}`, nil, ReasonDuplicateKey, `duplicate key "a" at offset 95 (params.arguments)`},
	{"duplicate deep", call + `{"a":[{"b":{"c":1,"c":2}}]}}}`, nil, ReasonDuplicateKey, `duplicate key "c" at offset 106 (params.arguments.a[0].b)`},
	{"duplicate in result", `{"jsonrpc":"2.0","id":1,"result":{"x":{"y":1,"y":2}}}`, nil, ReasonDuplicateKey, `duplicate key "y" at offset 45 (result.x)`},
	{"duplicate in other method params", `{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"cursor":"a","cursor":"b"}}`, nil, ReasonDuplicateKey, `duplicate key "cursor" at offset 69 (params)`},
	{"duplicate in big object", call + bigObjectJSON(100, `"k50":0`) + `}}`, nil, ReasonDuplicateKey, `duplicate key "k50" at offset 879 (params.arguments)`},
	{"NUL in key", call + `{"a\u0000":1}}}`, nil, ReasonNULInKey, `key "a\x00" contains a NUL character at offset 89 (params.arguments)`},

	// Keys equal under case folding.
	{"case-folded argument", call + `{"limit":1,"LIMIT":1000}}}`, nil, ReasonCaseFoldedKey, `key "LIMIT" is a case-insensitive duplicate of key "limit" at offset 99 (params.arguments)`},
	{"Kelvin sign", call + `{"kind":1,"\u212aind":2}}}`, nil, ReasonCaseFoldedKey, `key "\u212aind" is a case-insensitive duplicate of key "kind" at offset 98 (params.arguments)`},
	{"long s", call + `{"ſize":1,"SIZE":2}}}`, nil, ReasonCaseFoldedKey, `key "SIZE" is a case-insensitive duplicate of key "\u017fize" at offset 99 (params.arguments)`},
	{"case-folded envelope key", `{"jsonrpc":"2.0","method":"ping","METHOD":"tools/call"}`, nil, ReasonCaseFoldedKey, `key "METHOD" is a case-insensitive duplicate of key "method" at offset 33`},
	{"case-folded id", `{"jsonrpc":"2.0","id":1,"ID":2,"method":"ping"}`, nil, ReasonCaseFoldedKey, `key "ID" is a case-insensitive duplicate of key "id" at offset 24`},
	{"case-folded tool name", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a__b","Name":"a__c"}}`, nil, ReasonCaseFoldedKey, `key "Name" is a case-insensitive duplicate of key "name" at offset 70 (params)`},
	{"case-folded uri", `{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"a","URI":"b"}}`, nil, ReasonCaseFoldedKey, `key "URI" is a case-insensitive duplicate of key "uri" at offset 70 (params)`},
	{"case-folded in big object", call + bigObjectJSON(100, `"K99":0`) + `}}`, nil, ReasonCaseFoldedKey, `key "K99" is a case-insensitive duplicate of key "k99" at offset 879 (params.arguments)`},
	{"Kelvin sign in big object", call + bigObjectJSON(100, `"\u212a7":0`) + `}}`, nil, ReasonCaseFoldedKey, `key "\u212a7" is a case-insensitive duplicate of key "k7" at offset 879 (params.arguments)`},
	{"Greek sigma forms", call + `{"σ":1,"ς":2}}}`, nil, ReasonCaseFoldedKey, `key "\u03c2" is a case-insensitive duplicate of key "\u03c3" at offset 96 (params.arguments)`},

	// Keys that encoding/json would read as a known field.
	{"Method", `{"jsonrpc":"2.0","id":1,"Method":"tools/call"}`, nil, ReasonCaseVariantField, `key "Method" is a case variant of the field "method" at offset 24`},
	{"JSONRPC", `{"JSONRPC":"2.0","method":"ping"}`, nil, ReasonCaseVariantField, `key "JSONRPC" is a case variant of the field "jsonrpc" at offset 1`},
	{"Id", `{"jsonrpc":"2.0","Id":1,"method":"ping"}`, nil, ReasonCaseVariantField, `key "Id" is a case variant of the field "id" at offset 17`},
	{"Params", `{"jsonrpc":"2.0","method":"ping","Params":{}}`, nil, ReasonCaseVariantField, `key "Params" is a case variant of the field "params" at offset 33`},
	{"Result", `{"jsonrpc":"2.0","id":1,"Result":{}}`, nil, ReasonCaseVariantField, `key "Result" is a case variant of the field "result" at offset 24`},
	{"NAME", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"NAME":"a__b"}}`, nil, ReasonCaseVariantField, `key "NAME" is a case variant of the field "name" at offset 56 (params)`},
	{"argumentſ", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a__b","argumentſ":{}}}`, nil, ReasonCaseVariantField, `key "argument\u017f" is a case variant of the field "arguments" at offset 70 (params)`},
	{"escaped Arguments", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a__b","\u0041rguments":{}}}`, nil, ReasonCaseVariantField, `key "Arguments" is a case variant of the field "arguments" at offset 70 (params)`},
	{"RequestState", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a__b","RequestState":"x"}}`, nil, ReasonCaseVariantField, `key "RequestState" is a case variant of the field "requestState" at offset 70 (params)`},
	{"Uri", `{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"Uri":"file:///etc/passwd"}}`, nil, ReasonCaseVariantField, `key "Uri" is a case variant of the field "uri" at offset 60 (params)`},
	{"_META", `{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_META":{}}}`, nil, ReasonCaseVariantField, `key "_META" is a case variant of the field "_meta" at offset 56 (params)`},
	{"protocol version key", `{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolversion":"2026-07-28"}}}`, nil, ReasonCaseVariantField, `key "io.modelcontextprotocol/protocolversion" is a case variant of the field "io.modelcontextprotocol/protocolVersion" at offset 65 (params._meta)`},

	// Envelope.
	{"unknown envelope key", `{"jsonrpc":"2.0","method":"ping","role":"admin"}`, nil, ReasonUnknownField, `unknown key "role" in JSON-RPC message at offset 33`},
	{"long unknown key", `{"jsonrpc":"2.0","` + strings.Repeat("x", 100) + `":1}`, nil, ReasonUnknownField, `unknown key "` + strings.Repeat("x", 64) + `"… in JSON-RPC message at offset 17`},
	{"missing jsonrpc", `{"id":1,"method":"ping"}`, nil, ReasonInvalidJSONRPCVersion, `missing "jsonrpc" member at offset 0`},
	{"jsonrpc 1.0", `{"jsonrpc":"1.0","id":1,"method":"ping"}`, nil, ReasonInvalidJSONRPCVersion, `jsonrpc must be "2.0" at offset 11 (jsonrpc)`},
	{"jsonrpc number", `{"jsonrpc":2.0,"id":1,"method":"ping"}`, nil, ReasonInvalidJSONRPCVersion, `jsonrpc must be "2.0" at offset 11 (jsonrpc)`},
	{"jsonrpc null", `{"jsonrpc":null,"id":1,"method":"ping"}`, nil, ReasonInvalidJSONRPCVersion, `jsonrpc must be "2.0" at offset 11 (jsonrpc)`},
	{"batch", `[{"jsonrpc":"2.0","method":"ping"}]`, nil, ReasonBatchNotAllowed, `JSON-RPC batches are not allowed in this protocol version at offset 0`},
	{"empty batch", ` [ ] `, &Options{AllowBatch: true}, ReasonEmptyBatch, `empty batch at offset 1`},
	{"batch of scalars", `[1]`, &Options{AllowBatch: true}, ReasonInvalidRequest, `batch element must be a JSON-RPC message object at offset 1 ([0])`},
	{"bad batch element", `[{"jsonrpc":"2.0","method":"ping"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"a__b","arguments":{"x":1,"x":2}}}]`, &Options{AllowBatch: true}, ReasonDuplicateKey, `duplicate key "x" at offset 124 ([1].params.arguments)`},
	{"unterminated batch", `[{"jsonrpc":"2.0","method":"ping"}`, &Options{AllowBatch: true}, ReasonInvalidJSON, `unexpected end of input, expected ',' or ']' after array element at offset 34`},
	{"top-level string", `"tools/call"`, nil, ReasonInvalidRequest, `body must be a JSON-RPC message object at offset 0`},
	{"top-level null", `null`, nil, ReasonInvalidRequest, `body must be a JSON-RPC message object at offset 0`},
	{"id null", `{"jsonrpc":"2.0","id":null,"method":"ping"}`, nil, ReasonInvalidID, `id must not be null at offset 22 (id)`},
	{"id fraction", `{"jsonrpc":"2.0","id":1.5,"method":"ping"}`, nil, ReasonInvalidID, `id must be an integer, without fraction or exponent at offset 22 (id)`},
	{"id exponent", `{"jsonrpc":"2.0","id":1e3,"method":"ping"}`, nil, ReasonInvalidID, `id must be an integer, without fraction or exponent at offset 22 (id)`},
	{"id zero fraction", `{"jsonrpc":"2.0","id":1.0,"method":"ping"}`, nil, ReasonInvalidID, `id must be an integer, without fraction or exponent at offset 22 (id)`},
	{"id too big", `{"jsonrpc":"2.0","id":9007199254740992,"method":"ping"}`, nil, ReasonInvalidID, `id must be an integer between -(2^53-1) and 2^53-1 at offset 22 (id)`},
	{"id too small", `{"jsonrpc":"2.0","id":-9007199254740992,"method":"ping"}`, nil, ReasonInvalidID, `id must be an integer between -(2^53-1) and 2^53-1 at offset 22 (id)`},
	{"id huge", `{"jsonrpc":"2.0","id":123456789012345678901234567890,"method":"ping"}`, nil, ReasonInvalidID, `id must be an integer between -(2^53-1) and 2^53-1 at offset 22 (id)`},
	{"id bool", `{"jsonrpc":"2.0","id":true,"method":"ping"}`, nil, ReasonInvalidID, `id must be a string or an integer at offset 22 (id)`},
	{"id object", `{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}`, nil, ReasonInvalidID, `id must be a string or an integer at offset 22 (id)`},
	{"id array", `{"jsonrpc":"2.0","id":[1],"method":"ping"}`, nil, ReasonInvalidID, `id must be a string or an integer at offset 22 (id)`},
	{"response without id", `{"jsonrpc":"2.0","result":{}}`, nil, ReasonInvalidID, `response has no id at offset 0`},
	{"method number", `{"jsonrpc":"2.0","id":1,"method":5}`, nil, ReasonInvalidMethod, `method must be a string at offset 33 (method)`},
	{"method empty", `{"jsonrpc":"2.0","id":1,"method":""}`, nil, ReasonInvalidMethod, `method must not be empty at offset 33 (method)`},
	{"method and result", `{"jsonrpc":"2.0","id":1,"method":"ping","result":{}}`, nil, ReasonInvalidRequest, `message has both a method and a result or error at offset 0`},
	{"method and error", `{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"x"},"method":"ping"}`, nil, ReasonInvalidRequest, `message has both a method and a result or error at offset 0`},
	{"result and error", `{"jsonrpc":"2.0","id":1,"result":{},"error":{"code":1,"message":"x"}}`, nil, ReasonInvalidRequest, `message has both a result and an error at offset 0`},
	{"neither", `{"jsonrpc":"2.0","id":1}`, nil, ReasonInvalidRequest, `message has no method, result or error at offset 0`},
	{"result not an object", `{"jsonrpc":"2.0","id":1,"result":"ok"}`, nil, ReasonInvalidRequest, `result must be an object at offset 33 (result)`},
	{"error not an object", `{"jsonrpc":"2.0","id":1,"error":-1}`, nil, ReasonInvalidRequest, `error must be an object at offset 32 (error)`},
	{"response with params", `{"jsonrpc":"2.0","id":1,"params":{},"result":{}}`, nil, ReasonInvalidRequest, `response must not have params at offset 0`},

	// Params.
	{"params array", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["a__b"]}`, nil, ReasonInvalidParams, `params must be an object at offset 55 (params)`},
	{"params null", `{"jsonrpc":"2.0","id":1,"method":"tools/list","params":null}`, nil, ReasonInvalidParams, `params must be an object at offset 55 (params)`},
	{"params before method, array", `{"jsonrpc":"2.0","id":1,"params":[],"method":"tools/list"}`, nil, ReasonInvalidParams, `params must be an object at offset 33 (params)`},
	{"tools/call without params", `{"jsonrpc":"2.0","id":1,"method":"tools/call"}`, nil, ReasonInvalidParams, `tools/call requires params at offset 0`},
	{"tools/call without name", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":{}}}`, nil, ReasonInvalidName, `tools/call requires params.name at offset 55 (params)`},
	{"tools/call name number", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":5}}`, nil, ReasonInvalidName, `name must be a string at offset 63 (params.name)`},
	{"tools/call name null", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":null}}`, nil, ReasonInvalidName, `name must be a string at offset 63 (params.name)`},
	{"prompts/get without name", `{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{}}`, nil, ReasonInvalidName, `prompts/get requires params.name at offset 56 (params)`},
	{"params before method, name missing", `{"jsonrpc":"2.0","id":1,"params":{"arguments":{}},"method":"tools/call"}`, nil, ReasonInvalidName, `tools/call requires params.name at offset 33 (params)`},
	{"params before method, bad arguments", `{"jsonrpc":"2.0","id":1,"params":{"name":"a__b","arguments":[]},"method":"tools/call"}`, nil, ReasonInvalidArguments, `arguments must be an object at offset 60 (params.arguments)`},
	{"resources/read without uri", `{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{}}`, nil, ReasonInvalidURI, `resources/read requires params.uri at offset 59 (params)`},
	{"resources/read uri number", `{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":1}}`, nil, ReasonInvalidURI, `uri must be a string at offset 66 (params.uri)`},
	{"resources/subscribe without params", `{"jsonrpc":"2.0","id":1,"method":"resources/subscribe"}`, nil, ReasonInvalidParams, `resources/subscribe requires params at offset 0`},
	{"resources/unsubscribe uri null", `{"jsonrpc":"2.0","id":1,"method":"resources/unsubscribe","params":{"uri":null}}`, nil, ReasonInvalidURI, `uri must be a string at offset 73 (params.uri)`},
	{"arguments null", call + `null}}`, nil, ReasonInvalidArguments, `arguments must be an object, not null at offset 88 (params.arguments)`},
	{"arguments array", call + `[]}}`, nil, ReasonInvalidArguments, `arguments must be an object at offset 88 (params.arguments)`},
	{"arguments string", call + `"{}"}}`, nil, ReasonInvalidArguments, `arguments must be an object at offset 88 (params.arguments)`},
	{"arguments bad literal", call + `nul}}`, nil, ReasonInvalidJSON, `invalid literal at offset 88 (params.arguments)`},
	{"prompt argument number", `{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"a__b","arguments":{"topic":"x","n":1}}}`, nil, ReasonInvalidArguments, `prompt argument values must be strings at offset 100 (params.arguments.n)`},
	{"prompt argument null", `{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"a__b","arguments":{"n":null}}}`, nil, ReasonInvalidArguments, `prompt argument values must be strings at offset 88 (params.arguments.n)`},
	{"prompt argument object", `{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"a__b","arguments":{"n":{"a":"b"}}}}`, nil, ReasonInvalidArguments, `prompt argument values must be strings at offset 88 (params.arguments.n)`},
	{"prompt arguments null", `{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"a__b","arguments":null}}`, nil, ReasonInvalidArguments, `arguments must be an object, not null at offset 83 (params.arguments)`},
	{"_meta string", `{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":"x"}}`, nil, ReasonInvalidMeta, `_meta must be an object at offset 64 (params._meta)`},
	{"protocol version number", `{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":20260728}}}`, nil, ReasonInvalidMeta, `protocol version must be a string at offset 107 (params._meta["io.modelcontextprotocol/protocolVersion"])`},
	{"progress token object", `{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"progressToken":{"k":1}}}}`, nil, ReasonInvalidMeta, `progressToken must be a string or an integer at offset 81 (params._meta.progressToken)`},
	{"progress token array", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a__b","_meta":{"progressToken":[1]}}}`, nil, ReasonInvalidMeta, `progressToken must be a string or an integer at offset 95 (params._meta.progressToken)`},
	{"progress token bool", `{"jsonrpc":"2.0","method":"notifications/initialized","params":{"_meta":{"progressToken":true}}}`, nil, ReasonInvalidMeta, `progressToken must be a string or an integer at offset 89 (params._meta.progressToken)`},
	{"progress token null", `{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"progressToken":null}}}`, nil, ReasonInvalidMeta, `progressToken must be a string or an integer at offset 81 (params._meta.progressToken)`},
	{"progress token fraction", `{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"progressToken":1.5}}}`, nil, ReasonInvalidMeta, `progressToken must be an integer, without fraction or exponent at offset 81 (params._meta.progressToken)`},
	{"progress token exponent", `{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"progressToken":1e3}}}`, nil, ReasonInvalidMeta, `progressToken must be an integer, without fraction or exponent at offset 81 (params._meta.progressToken)`},
	{"progress token too big", `{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"progressToken":9007199254740992}}}`, nil, ReasonInvalidMeta, `progressToken must be an integer between -(2^53-1) and 2^53-1 at offset 81 (params._meta.progressToken)`},
	{"progress token params before method", `{"jsonrpc":"2.0","id":1,"params":{"_meta":{"progressToken":{}}},"method":"tools/list"}`, nil, ReasonInvalidMeta, `progressToken must be a string or an integer at offset 59 (params._meta.progressToken)`},
	{"progress token key", `{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"progresstoken":{}}}}`, nil, ReasonCaseVariantField, `key "progresstoken" is a case variant of the field "progressToken" at offset 65 (params._meta)`},
	{"progress token bad literal", `{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"progressToken":tru}}}`, nil, ReasonInvalidJSON, `invalid literal at offset 81 (params._meta.progressToken)`},
}

// bigObjectJSON returns an object of n keys "k0".."k<n-1>" followed by
// extra members, large enough to use the map-based duplicate check.
func bigObjectJSON(n int, extra ...string) string {
	var b strings.Builder
	b.WriteByte('{')
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`"k`)
		b.WriteString(strconv.Itoa(i))
		b.WriteString(`":0`)
	}
	for _, e := range extra {
		b.WriteByte(',')
		b.WriteString(e)
	}
	b.WriteByte('}')
	return b.String()
}

func TestParseRejects(t *testing.T) {
	for _, tt := range rejectTests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := Parse([]byte(tt.body), tt.opts)
			if err == nil {
				t.Fatalf("Parse accepted %q: %+v", tt.body, b.Messages)
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("Parse error %v is a %T, want *Error", err, err)
			}
			if e.Reason != tt.reason {
				t.Errorf("Reason = %q, want %q (%v)", e.Reason, tt.reason, err)
			}
			if got := err.Error(); got != tt.msg {
				t.Errorf("message:\n got %s\nwant %s", got, tt.msg)
			}
			if b != nil {
				t.Errorf("Parse returned a body with an error")
			}
		})
	}
}

// TestParseKeyCheckSizes covers both sides of the switch from the linear
// duplicate scan to the map, for every position of the clash.
func TestParseKeyCheckSizes(t *testing.T) {
	for n := 1; n <= 2*bigObject+2; n++ {
		for dup := range n {
			for _, tc := range []struct {
				key    string
				reason Reason
			}{
				{"k" + strconv.Itoa(dup), ReasonDuplicateKey},
				{"K" + strconv.Itoa(dup), ReasonCaseFoldedKey},
				{`\u212a` + strconv.Itoa(dup), ReasonCaseFoldedKey},
				{`\u006b` + strconv.Itoa(dup), ReasonDuplicateKey},
			} {
				body := call + bigObjectJSON(n, `"`+tc.key+`":0`) + `}}`
				_, err := Parse([]byte(body), nil)
				var e *Error
				if !errors.As(err, &e) || e.Reason != tc.reason {
					t.Fatalf("n=%d key %s: err = %v, want reason %s", n, tc.key, err, tc.reason)
				}
			}
		}
		if _, err := Parse([]byte(call+bigObjectJSON(n)+`}}`), nil); err != nil {
			t.Fatalf("n=%d without a clash: %v", n, err)
		}
	}
}

func raw(s string) json.RawMessage { return json.RawMessage(s) }

var acceptTests = []struct {
	name  string
	body  string
	opts  *Options
	batch bool
	want  []Message
}{
	{
		name: "tools/call",
		body: `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"notion__get_pages","arguments":{"workspace_id":"ws_abc123","limit":100,"ratio":-1.5e-3,"big":123456789012345678901234567890,"tags":["a",{"b":null}],"deep":{"x":{"y":[]}},"ok":true,"no":false,"nil":null}}}`,
		want: []Message{{
			Kind:      KindRequest,
			ID:        raw(`7`),
			Method:    "tools/call",
			Params:    raw(`{"name":"notion__get_pages","arguments":{"workspace_id":"ws_abc123","limit":100,"ratio":-1.5e-3,"big":123456789012345678901234567890,"tags":["a",{"b":null}],"deep":{"x":{"y":[]}},"ok":true,"no":false,"nil":null}}`),
			Name:      "notion__get_pages",
			Arguments: raw(`{"workspace_id":"ws_abc123","limit":100,"ratio":-1.5e-3,"big":123456789012345678901234567890,"tags":["a",{"b":null}],"deep":{"x":{"y":[]}},"ok":true,"no":false,"nil":null}`),
			Args: tree(map[string]any{
				"workspace_id": "ws_abc123",
				"limit":        json.Number("100"),
				"ratio":        json.Number("-1.5e-3"),
				"big":          json.Number("123456789012345678901234567890"),
				"tags":         []any{"a", map[string]any{"b": nil}},
				"deep":         map[string]any{"x": map[string]any{"y": []any{}}},
				"ok":           true,
				"no":           false,
				"nil":          nil,
			}),
		}},
	},
	{
		name: "escapes are decoded, bytes kept",
		body: `{"jsonrpc":"2.0","id":"req-\u0031","method":"tools/call","params":{"n\u0061me":"gh__se\u0061rch","arguments":{"q":"caf\u00e9 \ud83d\ude00 \"x\" \\ \/ \b\f\n\r\t","\u00e9":"\u0000"}}}`,
		want: []Message{{
			Kind:      KindRequest,
			ID:        raw(`"req-\u0031"`),
			Method:    "tools/call",
			Params:    raw(`{"n\u0061me":"gh__se\u0061rch","arguments":{"q":"caf\u00e9 \ud83d\ude00 \"x\" \\ \/ \b\f\n\r\t","\u00e9":"\u0000"}}`),
			Name:      "gh__search",
			Arguments: raw(`{"q":"caf\u00e9 \ud83d\ude00 \"x\" \\ \/ \b\f\n\r\t","\u00e9":"\u0000"}`),
			Args:      tree(map[string]any{"q": "café 😀 \"x\" \\ / \b\f\n\r\t", "é": "\x00"}),
		}},
	},
	{
		name: "whitespace everywhere",
		body: " \r\n\t{ \"jsonrpc\" : \"2.0\" ,\n \"id\" : -3 , \"method\" : \"tools/call\" , \"params\" : { \"name\" : \"a__b\" , \"arguments\" : { \"x\" : [ 1 , 2 ] } } } \n",
		want: []Message{{
			Kind:      KindRequest,
			ID:        raw(`-3`),
			Method:    "tools/call",
			Params:    raw(`{ "name" : "a__b" , "arguments" : { "x" : [ 1 , 2 ] } }`),
			Name:      "a__b",
			Arguments: raw(`{ "x" : [ 1 , 2 ] }`),
			Args:      tree(map[string]any{"x": []any{json.Number("1"), json.Number("2")}}),
		}},
	},
	{
		name: "params before method",
		body: `{"params":{"arguments":{"a":"b"},"name":"a__b"},"id":"x","method":"tools/call","jsonrpc":"2.0"}`,
		want: []Message{{
			Kind:      KindRequest,
			ID:        raw(`"x"`),
			Method:    "tools/call",
			Params:    raw(`{"arguments":{"a":"b"},"name":"a__b"}`),
			Name:      "a__b",
			Arguments: raw(`{"a":"b"}`),
			Args:      tree(map[string]any{"a": "b"}),
		}},
	},
	{
		name: "no arguments",
		body: `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a__b"}}`,
		want: []Message{{Kind: KindRequest, ID: raw(`1`), Method: "tools/call", Params: raw(`{"name":"a__b"}`), Name: "a__b"}},
	},
	{
		name: "empty arguments",
		body: `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a__b","arguments":{}}}`,
		want: []Message{{
			Kind: KindRequest, ID: raw(`1`), Method: "tools/call",
			Params: raw(`{"name":"a__b","arguments":{}}`), Name: "a__b",
			Arguments: raw(`{}`), Args: tree(map[string]any{}),
		}},
	},
	{
		name: "keys that only look alike",
		body: `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a__b","arguments":{"e":1,"é":2,"limit":3,"limits":4,"ǅ":5,"İ":6,"i":7}}}`,
		want: []Message{{
			Kind: KindRequest, ID: raw(`1`), Method: "tools/call",
			Params:    raw(`{"name":"a__b","arguments":{"e":1,"é":2,"limit":3,"limits":4,"ǅ":5,"İ":6,"i":7}}`),
			Name:      "a__b",
			Arguments: raw(`{"e":1,"é":2,"limit":3,"limits":4,"ǅ":5,"İ":6,"i":7}`),
			Args: tree(map[string]any{"e": json.Number("1"), "é": json.Number("2"), "limit": json.Number("3"),
				"limits": json.Number("4"), "ǅ": json.Number("5"), "İ": json.Number("6"), "i": json.Number("7")}),
		}},
	},
	{
		name: "unknown and SDK params members",
		body: `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a__b","requestState":"s","inputResponses":{},"task":{"ttl":1},"_meta":{"progressToken":5,"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}`,
		want: []Message{{
			Kind: KindRequest, ID: raw(`1`), Method: "tools/call",
			Params:              raw(`{"name":"a__b","requestState":"s","inputResponses":{},"task":{"ttl":1},"_meta":{"progressToken":5,"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}`),
			Name:                "a__b",
			MetaProtocolVersion: "2026-07-28",
		}},
	},
	{
		name: "_meta with spaces",
		body: `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a__b", "_meta" : { "io.modelcontextprotocol/protocolVersion" : "2026-07-28" } }}`,
		want: []Message{{
			Kind: KindRequest, ID: raw(`1`), Method: "tools/call",
			Params:              raw(`{"name":"a__b", "_meta" : { "io.modelcontextprotocol/protocolVersion" : "2026-07-28" } }`),
			Name:                "a__b",
			MetaProtocolVersion: "2026-07-28",
		}},
	},
	{
		name: "prompts/get",
		body: `{"jsonrpc":"2.0","id":2,"method":"prompts/get","params":{"name":"docs__summary","arguments":{"topic":"x","lang":""}}}`,
		want: []Message{{
			Kind: KindRequest, ID: raw(`2`), Method: "prompts/get",
			Params:    raw(`{"name":"docs__summary","arguments":{"topic":"x","lang":""}}`),
			Name:      "docs__summary",
			Arguments: raw(`{"topic":"x","lang":""}`),
			Args:      tree(map[string]any{"topic": "x", "lang": ""}),
		}},
	},
	{
		name: "resources/read",
		body: `{"jsonrpc":"2.0","id":3,"method":"resources/read","params":{"uri":"file:///a%20b"}}`,
		want: []Message{{Kind: KindRequest, ID: raw(`3`), Method: "resources/read", Params: raw(`{"uri":"file:///a%20b"}`), URI: "file:///a%20b"}},
	},
	{
		name: "resources/subscribe",
		body: `{"jsonrpc":"2.0","id":3,"method":"resources/subscribe","params":{"uri":"x://y"}}`,
		want: []Message{{Kind: KindRequest, ID: raw(`3`), Method: "resources/subscribe", Params: raw(`{"uri":"x://y"}`), URI: "x://y"}},
	},
	{
		name: "resources/unsubscribe",
		body: `{"jsonrpc":"2.0","id":3,"method":"resources/unsubscribe","params":{"uri":"x://y"}}`,
		want: []Message{{Kind: KindRequest, ID: raw(`3`), Method: "resources/unsubscribe", Params: raw(`{"uri":"x://y"}`), URI: "x://y"}},
	},
	{
		name: "other methods are not extracted",
		body: `{"jsonrpc":"2.0","id":4,"method":"tools/list","params":{"cursor":"c","name":5,"arguments":null,"uri":[]}}`,
		want: []Message{{Kind: KindRequest, ID: raw(`4`), Method: "tools/list", Params: raw(`{"cursor":"c","name":5,"arguments":null,"uri":[]}`)}},
	},
	{
		name: "notification",
		body: `{"jsonrpc":"2.0","method":"notifications/initialized"}`,
		want: []Message{{Kind: KindNotification, Method: "notifications/initialized"}},
	},
	{
		name: "unknown method",
		body: `{"jsonrpc":"2.0","id":1,"method":"x/\u00e9"}`,
		want: []Message{{Kind: KindRequest, ID: raw(`1`), Method: "x/é"}},
	},
	{
		name: "response with result",
		body: `{"jsonrpc":"2.0","id":"srv-1","result":{"action":"accept","content":{"a":1}}}`,
		want: []Message{{Kind: KindResponse, ID: raw(`"srv-1"`), Result: raw(`{"action":"accept","content":{"a":1}}`)}},
	},
	{
		name: "tool result that failed",
		body: `{"jsonrpc":"2.0","id":1,"result":{"content":[],"isError":true}}`,
		want: []Message{{Kind: KindResponse, ID: raw(`1`), Result: raw(`{"content":[],"isError":true}`), IsError: true}},
	},
	{
		name: "isError spelled with an escape",
		body: `{"jsonrpc":"2.0","id":1,"result":{"\u0069sError" : true }}`,
		want: []Message{{Kind: KindResponse, ID: raw(`1`), Result: raw(`{"\u0069sError" : true }`), IsError: true}},
	},
	{
		name: "isError false, a string, or below the top of the result",
		body: `{"jsonrpc":"2.0","id":1,"result":{"isError":false,"content":[{"isError":true}],"structuredContent":{"isError":true},"isErrors":true}}`,
		want: []Message{{Kind: KindResponse, ID: raw(`1`),
			Result: raw(`{"isError":false,"content":[{"isError":true}],"structuredContent":{"isError":true},"isErrors":true}`)}},
	},
	{
		name: "isError in an error is not a tool result's",
		body: `{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"m","isError":true}}`,
		want: []Message{{Kind: KindResponse, ID: raw(`1`), Error: raw(`{"code":1,"message":"m","isError":true}`)}},
	},
	{
		name: "response with error",
		body: `{"jsonrpc":"2.0","id":0,"error":{"code":-32601,"message":"no"}}`,
		want: []Message{{Kind: KindResponse, ID: raw(`0`), Error: raw(`{"code":-32601,"message":"no"}`)}},
	},
	{
		name: "id limits",
		body: `{"jsonrpc":"2.0","id":-9007199254740991,"method":"ping"}`,
		want: []Message{{Kind: KindRequest, ID: raw(`-9007199254740991`), Method: "ping"}},
	},
	{
		name: "progress token limits",
		body: `{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"progressToken":-9007199254740991}}}`,
		want: []Message{{Kind: KindRequest, ID: raw(`1`), Method: "tools/list", Params: raw(`{"_meta":{"progressToken":-9007199254740991}}`)}},
	},
	{
		name: "string progress token",
		body: `{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"progressToken":"t-\u0031","other":{"k":[null]}}}}`,
		want: []Message{{Kind: KindRequest, ID: raw(`1`), Method: "tools/list", Params: raw(`{"_meta":{"progressToken":"t-\u0031","other":{"k":[null]}}}`)}},
	},
	{
		name: "empty string id",
		body: `{"jsonrpc":"2.0","id":"","method":"ping"}`,
		want: []Message{{Kind: KindRequest, ID: raw(`""`), Method: "ping"}},
	},
	{
		name: "DEL and non-BMP characters are fine in strings",
		body: "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"a__b\",\"arguments\":{\"s\":\"\x7f\xf0\x9f\x98\x80\"}}}",
		want: []Message{{
			Kind: KindRequest, ID: raw(`1`), Method: "tools/call",
			Params:    raw("{\"name\":\"a__b\",\"arguments\":{\"s\":\"\x7f\xf0\x9f\x98\x80\"}}"),
			Name:      "a__b",
			Arguments: raw("{\"s\":\"\x7f\xf0\x9f\x98\x80\"}"),
			Args:      tree(map[string]any{"s": "\x7f😀"}),
		}},
	},
	{
		// cmp's cost grows exponentially with depth, hence the small limit;
		// TestParseDefaultDepth covers the default.
		name: "nesting at the limit",
		body: call + `{"a":` + nested(5) + `}}}`,
		opts: &Options{MaxDepth: 8},
		want: []Message{{
			Kind: KindRequest, ID: raw(`1`), Method: "tools/call",
			Params:    raw(`{"name":"gh__search","arguments":{"a":` + nested(5) + `}}`),
			Name:      "gh__search",
			Arguments: raw(`{"a":` + nested(5) + `}`),
			Args:      tree(map[string]any{"a": nestedAny(5)}),
		}},
	},
	{
		name: "body at the size limit",
		body: `{"jsonrpc":"2.0","method":"ping"}`,
		opts: &Options{MaxBytes: 33},
		want: []Message{{Kind: KindNotification, Method: "ping"}},
	},
	{
		name:  "batch",
		body:  `[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a__b","arguments":{"x":"1"}}}, {"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":0}},{"jsonrpc":"2.0","id":9,"result":{}}]`,
		opts:  &Options{AllowBatch: true},
		batch: true,
		want: []Message{
			{
				Kind: KindRequest, ID: raw(`1`), Method: "tools/call",
				Params: raw(`{"name":"a__b","arguments":{"x":"1"}}`), Name: "a__b",
				Arguments: raw(`{"x":"1"}`), Args: tree(map[string]any{"x": "1"}),
			},
			{Kind: KindNotification, Method: "notifications/cancelled", Params: raw(`{"requestId":0}`)},
			{Kind: KindResponse, ID: raw(`9`), Result: raw(`{}`)},
		},
	},
}

func nestedAny(depth int) any {
	if depth == 0 {
		return nil
	}
	v := []any{}
	for range depth - 1 {
		v = []any{v}
	}
	return v
}

func TestParseDefaultDepth(t *testing.T) {
	b, err := Parse([]byte(call+`{"a":`+nested(61)+`}}}`), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(b.Messages[0].Args.Member("a").Any(), nestedAny(61)) {
		t.Error("Args do not hold the nested arrays")
	}
}

func TestParseAccepts(t *testing.T) {
	for _, tt := range acceptTests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := Parse([]byte(tt.body), tt.opts)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			want := &Body{Messages: tt.want, Batch: tt.batch}
			if diff := cmp.Diff(want, b, cmpopts.IgnoreFields(Message{}, "IDSpan", "NameSpan", "MetaSpan"), valueTree); diff != "" {
				t.Errorf("Body mismatch (-want +got):\n%s", diff)
			}
			checkSpans(t, []byte(tt.body), b)
		})
	}
}

// checkSpans checks that each message's spans locate its id and name
// tokens, and its params._meta object, in body.
func checkSpans(t *testing.T, body []byte, b *Body) {
	t.Helper()
	for i, m := range b.Messages {
		if got := string(body[m.IDSpan.Start:m.IDSpan.End]); got != string(m.ID) {
			t.Errorf("message %d: IDSpan holds %q, want the id %q", i, got, m.ID)
		}
		var params struct {
			Meta json.RawMessage `json:"_meta"`
		}
		json.Unmarshal(m.Params, &params)
		if got := string(body[m.MetaSpan.Start:m.MetaSpan.End]); got != string(params.Meta) {
			t.Errorf("message %d: MetaSpan holds %q, want the _meta %q", i, got, params.Meta)
		}
		if m.NameSpan.Len() == 0 {
			if m.Name != "" {
				t.Errorf("message %d: name %q without a span", i, m.Name)
			}
			continue
		}
		var name string
		if err := json.Unmarshal(body[m.NameSpan.Start:m.NameSpan.End], &name); err != nil || name != m.Name {
			t.Errorf("message %d: NameSpan holds %q, want the token of %q (%v)", i, body[m.NameSpan.Start:m.NameSpan.End], m.Name, err)
		}
	}
}

// TestParseAliasesBody pins down that the raw fields are the caller's bytes,
// not copies: what was decided on is what will be forwarded.
func TestParseAliasesBody(t *testing.T) {
	body := []byte(call + `{"a":1}}}`)
	b, err := Parse(body, nil)
	if err != nil {
		t.Fatal(err)
	}
	m := b.Messages[0]
	if &m.Arguments[0] != &body[88] || &m.Params[0] != &body[55] || &m.ID[0] != &body[22] {
		t.Error("raw fields do not alias the body")
	}
	// The decoded tree must not: a caller reusing its buffer must not
	// change the arguments the decision was made on.
	body[94] = '2'
	if got, _ := m.Args.Member("a").Number(); got != "1" {
		t.Errorf("Args changed with the body: %v", got)
	}
}

func TestErrorJSONRPCCode(t *testing.T) {
	for _, tt := range rejectTests {
		_, err := Parse([]byte(tt.body), tt.opts)
		var e *Error
		if !errors.As(err, &e) {
			t.Fatalf("%s: %v", tt.name, err)
		}
		want := CodeInvalidRequest
		switch tt.reason {
		case ReasonInvalidJSON, ReasonInvalidUTF8, ReasonInvalidEscape, ReasonInvalidSurrogate,
			ReasonControlInString, ReasonTrailingData:
			want = CodeParseError
		case ReasonInvalidParams, ReasonInvalidName, ReasonInvalidURI, ReasonInvalidArguments, ReasonInvalidMeta:
			want = CodeInvalidParams
		}
		if got := e.JSONRPCCode(); got != want {
			t.Errorf("%s: JSONRPCCode() = %d, want %d", tt.name, got, want)
		}
	}
}

// TestErrorsDoNotEchoValues plants a marker in argument values of bodies
// that fail in many ways and checks that no message repeats it.
func TestErrorsDoNotEchoValues(t *testing.T) {
	const secret = "hunter2SECRET"
	bodies := []string{
		call + `{"password":"` + secret + `","password":"` + secret + `"}}}`,
		call + `{"password":"` + secret + `\x"}}}`,
		call + `{"password":"` + secret + "\xff" + `"}}}`,
		call + `{"password":"` + secret + "\n" + `"}}}`,
		call + `{"password":` + secret + `}}}`,
		call + `{"password":"` + secret + `"}}} ` + secret,
		call + `"` + secret + `"}}`,
		`{"jsonrpc":"` + secret + `","method":"ping"}`,
		`{"jsonrpc":"2.0","id":"` + secret + `","method":"` + secret + `","params":{"_meta":{"` + MetaProtocolVersionKey + `":` + `[` + `"` + secret + `"]}}}`,
		`{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"a__b","arguments":{"p":["` + secret + `"]}}}`,
	}
	for _, body := range bodies {
		_, err := Parse([]byte(body), nil)
		if err == nil {
			t.Errorf("accepted %s", body)
			continue
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("error echoes a value: %v", err)
		}
	}
}

func TestParseNilAndZeroOptions(t *testing.T) {
	body := []byte(`{"jsonrpc":"2.0","method":"ping"}`)
	for _, opts := range []*Options{nil, {}, {MaxBytes: -1, MaxDepth: -1}} {
		if _, err := Parse(body, opts); err != nil {
			t.Errorf("Parse(%+v): %v", opts, err)
		}
	}
}

func TestKindString(t *testing.T) {
	for k, want := range map[Kind]string{KindRequest: "request", KindNotification: "notification", KindResponse: "response", 0: "Kind(0)"} {
		if got := k.String(); got != want {
			t.Errorf("Kind(%d).String() = %q, want %q", k, got, want)
		}
	}
}

// TestReleaseDropsReferences checks that a parser goes back to the pool
// holding nothing of the body or of the trees it built, even after an error
// left its stacks half full.
func TestReleaseDropsReferences(t *testing.T) {
	for _, body := range []string{
		call + `{"a":{"b":[1,{"c":"x"}],"d":"y"}}}}`,
		call + `{"a":{"b":[1,{"c":"x","c":1}]}}}}`,
		call + `{"a":{"b":[1,{"c":"x"},` + "\xff" + `]}}}}`,
	} {
		p := &parser{data: []byte(body), maxDepth: DefaultMaxDepth}
		_, _ = p.body(false)
		p.release()
		if p.data != nil || p.argStr != "" {
			t.Errorf("%s: data or argStr kept", body)
		}
		for _, k := range p.keys[:cap(p.keys)] {
			if k.key != nil {
				t.Errorf("%s: key %q kept", body, k.key)
			}
		}
		for _, n := range p.tape[:cap(p.tape)] {
			if n != (node{}) {
				t.Errorf("%s: tape node %+v kept", body, n)
			}
		}
	}
}

// tree lays out a decoded JSON tree as a Value, for tables of expected
// messages; valueTree then compares Values by what Any makes of them.
func tree(v any) Value {
	var t []node
	var add func(key string, v any)
	// children adds the members (or, with no keys, the elements) of the
	// container at, each linked to the next.
	children := func(at int, keys []string, vals []any) {
		t[at].n = int32(len(vals))
		for i, e := range vals {
			start := len(t)
			if keys != nil {
				add(keys[i], e)
			} else {
				add("", e)
			}
			if i+1 < len(vals) {
				t[start].next = int32(len(t))
			}
		}
	}
	add = func(key string, v any) {
		at := len(t)
		t = append(t, node{key: key})
		switch v := v.(type) {
		case map[string]any:
			t[at].kind = Object
			var keys []string
			var vals []any
			for k, e := range v {
				keys, vals = append(keys, k), append(vals, e)
			}
			children(at, keys, vals)
		case []any:
			t[at].kind = Array
			children(at, nil, v)
		case string:
			t[at].kind, t[at].str = String, v
		case json.Number:
			t[at].kind, t[at].str = Number, string(v)
		case bool:
			t[at].kind, t[at].b = Bool, v
		case nil:
			t[at].kind = Null
		default:
			panic(fmt.Sprintf("tree: %T", v))
		}
	}
	add("", v)
	return Value{t, 0}
}

var valueTree = cmp.Transformer("Any", func(v Value) any { return v.Any() })
