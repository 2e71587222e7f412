package audit

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/amgateway/amg/mcpfilter"
)

func testKey(b byte) []byte { return bytes.Repeat([]byte{b}, KeySize) }

// decode parses JSON as the MCP parser hands arguments over.
func decode(t *testing.T, s string) map[string]any {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		t.Fatalf("decode %s: %v", s, err)
	}
	return m
}

func TestRedact(t *testing.T) {
	r := NewRedactor(testKey(1))
	h := func(v any) string { return `"` + r.HMAC(v) + `"` }
	tests := []struct {
		name  string
		args  string // JSON, decoded with UseNumber
		rules []string
		want  string
	}{
		{
			name: "default keys at depth",
			args: `{"config":{"db":{"Password":"p1","host":"db1"}},"query":"select"}`,
			want: `{"config":{"db":{"Password":` + h("p1") + `,"host":"db1"}},"query":"select"}`,
		},
		{
			name: "case and separator variants",
			args: `{"API-Key":"k1","Authorization":"Bearer abc","x_auth_token":"t1","ClientSecret":"s1","session-cookie":"c1","aws.credentials":"c2","keywords":["a"],"author":"me"}`,
			want: `{"API-Key":` + h("k1") + `,"Authorization":` + h("Bearer abc") + `,"ClientSecret":` + h("s1") +
				`,"author":"me","aws.credentials":` + h("c2") + `,"keywords":["a"],"session-cookie":` + h("c1") + `,"x_auth_token":` + h("t1") + `}`,
		},
		{
			name: "keys with spaces or non-ASCII letters",
			args: `{"Access_Token_ü":"t1","Session ID":"s1","Grüße":"hi"}`,
			want: `{"Access_Token_ü":` + h("t1") + `,"Grüße":"hi","Session ID":` + h("s1") + `}`,
		},
		{
			name: "arrays of objects",
			args: `{"items":[{"name":"a","token":"t1"},{"name":"b","token":"t2"},"plain",[{"passwd":"p"}]]}`,
			want: `{"items":[{"name":"a","token":` + h("t1") + `},{"name":"b","token":` + h("t2") + `},"plain",[{"passwd":` + h("p") + `}]]}`,
		},
		{
			name: "a sensitive object or array is replaced whole",
			args: `{"credentials":{"user":"u","pass":"p"},"tokens":["a","b"]}`,
			want: `{"credentials":` + h(map[string]any{"user": "u", "pass": "p"}) + `,"tokens":` + h([]any{"a", "b"}) + `}`,
		},
		{
			name:  "role globs",
			rules: []string{"cursor", "filter.*", "*ssn*", "rows.email"},
			args:  `{"cursor":"c1","page":{"cursor":"c2"},"filter":{"a":1,"b":{"c":2}},"filterx":3,"customer":{"ssn_last4":"1234"},"rows":[{"email":"e@x","id":1}]}`,
			want: `{"cursor":` + h("c1") + `,"customer":{"ssn_last4":` + h("1234") + `},"filter":{"a":` + h(1) + `,"b":` + h(map[string]any{"c": 2}) +
				`},"filterx":3,"page":{"cursor":"c2"},"rows":[{"email":` + h("e@x") + `,"id":1}]}`,
		},
		{
			name:  "globs match any depth with a leading star",
			rules: []string{"*.cursor"},
			args:  `{"cursor":"c1","page":{"cursor":"c2","next":{"cursor":"c3"}}}`,
			want:  `{"cursor":"c1","page":{"cursor":` + h("c2") + `,"next":{"cursor":` + h("c3") + `}}}`,
		},
		{
			name:  "globs ignore case and cross slashes in keys",
			rules: []string{"cursor", "*ssn*"},
			args:  `{"Cursor":"c1","a/ssn":"s1"}`,
			want:  `{"Cursor":` + h("c1") + `,"a/ssn":` + h("s1") + `}`,
		},
		{
			name:  "a malformed glob redacts everything",
			rules: []string{"["},
			args:  `{"a":1,"b":"x"}`,
			want:  `{"a":` + h(1) + `,"b":` + h("x") + `}`,
		},
		{
			name: "other values kept exactly",
			args: `{"limit":1.50,"big":123456789012345678901234567890,"exp":-1E+400,"ok":true,"none":null,"text":"<a href=\"x\">&amp;</a>\n\t\u0001é😀","list":[0,-0.0,{}]}`,
			want: `{"big":123456789012345678901234567890,"exp":-1E+400,"limit":1.50,"list":[0,-0.0,{}],"none":null,"ok":true,"text":"<a href=\"x\">&amp;</a>\n\t\u0001é😀"}`,
		},
		{
			name: "empty object",
			args: `{}`,
			want: `{}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := r.Redact(decode(t, tt.args), tt.rules)
			if diff := cmp.Diff(tt.want, string(got)); diff != "" {
				t.Errorf("Redact (-want +got):\n%s", diff)
			}
			if !json.Valid(got) {
				t.Errorf("output is not JSON: %s", got)
			}
		})
	}
}

func TestRedactUnencodable(t *testing.T) {
	r := NewRedactor(testKey(1))
	marker := `"` + Unencodable + `"`
	type unmarshalable struct{ C chan int }
	tests := []struct {
		name string
		args map[string]any
		want string
	}{
		{"nil", nil, ``},
		{"invalid UTF-8 value", map[string]any{"a": "ok", "b": "bad\xff"}, `{"a":"ok","b":` + marker + `}`},
		{"invalid UTF-8 sensitive value", map[string]any{"password": "bad\xff"}, `{"password":` + marker + `}`},
		{"invalid UTF-8 key hides its object", map[string]any{"a": map[string]any{"\xff": 1}, "b": 2}, `{"a":` + marker + `,"b":2}`},
		{"invalid UTF-8 top-level key", map[string]any{"\xff": 1}, marker},
		{"malformed number", map[string]any{"n": json.Number(`1,"x":2`), "m": json.Number("01")}, `{"m":` + marker + `,"n":` + marker + `}`},
		{"NaN", map[string]any{"f": math.NaN(), "g": 1.5}, `{"f":` + marker + `,"g":1.5}`},
		{"not JSON at all", map[string]any{"c": unmarshalable{make(chan int)}}, `{"c":` + marker + `}`},
		{"other Go values are redacted inside", map[string]any{"s": struct {
			Token string `json:"token"`
			N     int    `json:"n"`
		}{"t", 7}}, `{"s":{"n":7,"token":"` + r.HMAC("t") + `"}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := r.Redact(tt.args, nil)
			if diff := cmp.Diff(tt.want, string(got)); diff != "" {
				t.Errorf("Redact (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRedactTooDeep(t *testing.T) {
	r := NewRedactor(testKey(1))
	deep := map[string]any{}
	for m, i := deep, 0; i < 2*maxDepth; i++ {
		next := map[string]any{"password": "p"}
		m["d"] = next
		m = next
	}
	got := r.Redact(map[string]any{"deep": deep, "x": 1}, nil)
	if !json.Valid(got) || !bytes.Contains(got, []byte(`"`+Unencodable+`"`)) || !bytes.HasSuffix(got, []byte(`,"x":1}`)) {
		t.Fatalf("Redact of a value nested %d deep = %.200s...", 2*maxDepth, got)
	}
	if n := bytes.Count(got, []byte("{")); n > maxDepth+1 {
		t.Errorf("output nests %d objects, want the depth limit %d to cut it", n, maxDepth)
	}
}

// TestRedactPlantedSecret plants one secret everywhere a secret may hide and
// checks that no trace of it survives, in any encoding.
func TestRedactPlantedSecret(t *testing.T) {
	const secret = "s3cr3t-9f1c2e7a-planted"
	r := NewRedactor(testKey(1))
	args := map[string]any{
		"password":      secret,
		"Authorization": "Bearer " + secret,
		"nested":        map[string]any{"deeper": []any{map[string]any{"api_key": secret}}},
		"headers":       map[string]any{"Cookie": []any{secret, secret}},
		"cursor":        secret,
		"filter":        map[string]any{"q": secret},
		"token":         json.Number("12345678901234567890"),
		"limit":         json.Number("10"),
	}
	got := r.Redact(args, []string{"cursor", "filter.*"})
	for _, needle := range []string{secret, "s3cr3t", "12345678901234567890", hex.EncodeToString([]byte(secret))} {
		if bytes.Contains(got, []byte(needle)) {
			t.Errorf("output contains %q: %s", needle, got)
		}
	}
	if !bytes.Contains(got, []byte(`"limit":10`)) {
		t.Errorf("non-sensitive value lost: %s", got)
	}
}

func TestHMAC(t *testing.T) {
	r := NewRedactor(testKey(1))
	mac := hmac.New(sha256.New, testKey(1))
	mac.Write([]byte(`"hunter2"`))
	if got, want := r.HMAC("hunter2"), HMACPrefix+hex.EncodeToString(mac.Sum(nil)); got != want {
		t.Errorf("HMAC(%q) = %s, want HMAC-SHA256 of its JSON %s", "hunter2", got, want)
	}

	equal := [][]any{
		{json.Number("100"), 100, int64(100), uint8(100), 100.0, float32(100), json.Number("1e2"), json.Number("100.00"), json.Number("10000e-2")},
		{json.Number("0"), json.Number("-0"), json.Number("0.0e10"), 0, math.Copysign(0, -1)},
		{json.Number("0.1"), 0.1, json.Number("1e-1")},
		{map[string]any{"a": json.Number("1"), "b": []any{"x", nil, true}}, struct {
			B []any `json:"b"`
			A int   `json:"a"`
		}{[]any{"x", nil, true}, 1}},
		{[]any{"a", "b"}, []string{"a", "b"}},
		{"ok", "ok"},
	}
	for _, vs := range equal {
		want := r.HMAC(vs[0])
		for _, v := range vs[1:] {
			if got := r.HMAC(v); got != want {
				t.Errorf("HMAC(%#v) = %s, want %s as for %#v", v, got, want, vs[0])
			}
		}
	}

	distinct := []any{"100", json.Number("100"), json.Number("100.5"), "", nil, false, []any{}, map[string]any{}, "ok", "OK", json.Number("123456789012345678901234567890"), json.Number("123456789012345678901234567891")}
	seen := map[string]any{}
	for _, v := range distinct {
		h := r.HMAC(v)
		if !strings.HasPrefix(h, HMACPrefix) || len(h) != len(HMACPrefix)+64 {
			t.Errorf("HMAC(%#v) = %q, want %s and 64 hex digits", v, h, HMACPrefix)
		}
		if prev, ok := seen[h]; ok {
			t.Errorf("HMAC(%#v) = HMAC(%#v)", v, prev)
		}
		seen[h] = v
	}

	if a, b := r.HMAC("x"), NewRedactor(testKey(2)).HMAC("x"); a == b {
		t.Errorf("two install keys give the same HMAC %s", a)
	}
	if got := r.HMAC(math.Inf(1)); got != Unencodable {
		t.Errorf("HMAC(+Inf) = %q, want %q", got, Unencodable)
	}
}

func TestRedactEqualValuesEqualHMACs(t *testing.T) {
	r := NewRedactor(testKey(1))
	got := decode(t, string(r.Redact(decode(t, `{"password":"same","token":"same","n":{"secret":"other"}}`), nil)))
	if got["password"] != got["token"] {
		t.Errorf("equal values, different HMACs: %v", got)
	}
	if got["password"] == got["n"].(map[string]any)["secret"] {
		t.Errorf("different values, equal HMACs: %v", got)
	}
}

func TestCanonicalNumber(t *testing.T) {
	tests := []struct{ in, want string }{
		{"0", "0"}, {"-0", "0"}, {"0.000", "0"}, {"0e-5", "0"},
		{"1", "1"}, {"-1", "-1"}, {"1.0", "1"}, {"1.50", "1.5"}, {"12.34e1", "123.4"},
		{"1e2", "100"}, {"1E+2", "100"}, {"100e-2", "1"}, {"-1.5e-3", "-0.0015"},
		{"0.000001", "0.000001"}, {"1e-7", "1e-7"}, {"0.00000012", "1.2e-7"},
		{"1e20", "100000000000000000000"}, {"1e21", "1e+21"}, {"123e20", "1.23e+22"},
		{"123456789012345678901234567890", "1.2345678901234567890123456789e+29"},
		{"1E400", "1e+400"}, {"-2.5e-400", "-2.5e-400"},
		{"1e99999999999999999999", "1e99999999999999999999"},
	}
	for _, tt := range tests {
		n, ok := parseNumber(tt.in)
		if !ok {
			t.Errorf("parseNumber(%q) rejected", tt.in)
			continue
		}
		if got := string(n.appendCanonical(nil)); got != tt.want {
			t.Errorf("canonical(%s) = %s, want %s", tt.in, got, tt.want)
		}
	}
	for _, bad := range []string{"", "-", "01", "-01", "1.", ".5", "+1", "1e", "1e+", "NaN", "Infinity", "1 ", " 1", "0x1", "1_000", "1,2", "--1", "1e5.5"} {
		if _, ok := parseNumber(bad); ok {
			t.Errorf("parseNumber(%q) accepted", bad)
		}
	}
}

// Strings take RFC 8785's form, which is JSON.stringify's: the
// two-character escapes, \u00XX for the other control characters, and
// everything else as it is. Invalid UTF-8 has no canonical form.
func TestCanonicalString(t *testing.T) {
	got, err := appendString(nil, "a\"b\\c\n\r\t\b\f\x00\x1f\x7f<&>\u2028é😀")
	if err != nil {
		t.Fatal(err)
	}
	if want := `"a\"b\\c\n\r\t\b\f\u0000\u001f` + "\x7f<&>\u2028é😀" + `"`; string(got) != want {
		t.Errorf("appendString = %s, want %s", got, want)
	}
	if _, err := appendString(nil, "ok\xff"); err == nil {
		t.Error("appendString accepted invalid UTF-8")
	}
}

func TestSensitiveKey(t *testing.T) {
	for _, k := range []string{"password", "Password", "PASSWORD", "db_password", "passwd", "api-key", "API_KEY", "apiKey", "ssh_keys", "key",
		"x-auth-token", "access_token", "refresh-token", "Authorization", "proxy-authorization", "client_secret", "secrets", "credentials",
		"Set-Cookie", "cookies", "private_key_pem", "basic-auth", "bearer", "session_id", "PÄSSWORD_token"} {
		if !sensitiveKey(k) {
			t.Errorf("sensitiveKey(%q) = false", k)
		}
	}
	for _, k := range []string{"query", "keywords", "keyword", "author", "authors", "limit", "workspace_id", "page_size", "description", "passage"} {
		if sensitiveKey(k) {
			t.Errorf("sensitiveKey(%q) = true", k)
		}
	}
}

func TestNewRedactorEmptyKeyPanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("NewRedactor(nil) did not panic")
		}
	}()
	NewRedactor(nil)
}

func TestRedactRaw(t *testing.T) {
	r := NewRedactor([]byte("0123456789abcdef0123456789abcdef"))
	decode := func(s string) map[string]any {
		d := json.NewDecoder(strings.NewReader(s))
		d.UseNumber()
		var m map[string]any
		if err := d.Decode(&m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	tests := []struct {
		name     string
		raw      string
		rules    []string
		keepsRaw bool
		want     string // if set, what is recorded instead of raw
	}{
		{"nothing sensitive", `{"workspace_id": "ws_1", "limit": 1e2, "q": "caf\u00e9"}`, nil, true, ""},
		{"sensitive key", `{"workspace_id":"ws_1","api_key":"k"}`, nil, false, ""},
		{"sensitive key in an array of objects", `{"items":[{"id":1},{"id":2,"password":"p"}]}`, nil, false, ""},
		{"role rule", `{"workspace_id":"ws_1","cursor":"c"}`, []string{"cursor"}, false, ""},
		{"nested role rule", `{"filter":{"owner":"me"}}`, []string{"filter.owner"}, false, ""},
		{"rule that matches nothing", `{"filter":{"owner":"me"}}`, []string{"cursor"}, true, ""},
		{"line break between tokens", "{\"a\":\n1}", nil, true, `{"a": 1}`},
		{"pretty-printed", "{\r\n  \"q\": \"x\\ny\",\r\n  \"n\": [1,\n2]\r\n}", nil, true, `{    "q": "x\ny",    "n": [1, 2]  }`},
		{"pretty-printed, sensitive key", "{\n  \"token\": \"t\"\n}", nil, false, ""},
		{"deeply nested, nothing sensitive", `{"a":` + strings.Repeat(`{"b":`, 59) + `1` + strings.Repeat(`}`, 60), nil, true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := decode(tt.raw)
			parsed, err := mcpfilter.ParseArguments([]byte(tt.raw))
			if err != nil {
				t.Fatal(err)
			}
			raw := []byte(tt.raw)
			got := r.RedactRaw(raw, parsed, tt.rules)
			if string(raw) != tt.raw {
				t.Fatalf("RedactRaw changed the bytes it was given to %q", raw)
			}
			if tt.keepsRaw {
				want := tt.raw
				if tt.want != "" {
					want = tt.want
				}
				if string(got) != want {
					t.Errorf("got %s, want %s", got, want)
				}
				return
			}
			if want := r.Redact(args, tt.rules); string(got) != string(want) {
				t.Errorf("got %s, want what Redact gives: %s", got, want)
			}
		})
	}
	if got := r.RedactRaw(json.RawMessage(`{"a":1}`), mcpfilter.Value{}, nil); got != nil {
		t.Errorf("absent arguments recorded as %s", got)
	}
	// Without the raw bytes, the arguments are encoded from what was parsed.
	parsed, _ := mcpfilter.ParseArguments([]byte(`{"b":2,"a":1}`))
	if got := r.RedactRaw(nil, parsed, nil); string(got) != `{"a":1,"b":2}` {
		t.Errorf("arguments without raw bytes recorded as %s", got)
	}
}

// Below a path longer than maxRulePath nothing is looked at: under role
// rules the value is redacted whole, so that an agent's long keys cannot
// make every key beneath them cost a match against the whole path.
func TestRedactLongPath(t *testing.T) {
	r := NewRedactor(testKey(1))
	long := strings.Repeat("k", maxRulePath)
	args := map[string]any{"x": map[string]any{long: map[string]any{"title": "t", "cursor": "c"}}, "cursor": "c", "title": "t"}
	got := decode(t, string(r.Redact(args, []string{"cursor"})))
	if got["title"] != "t" || !strings.HasPrefix(got["cursor"].(string), HMACPrefix) {
		t.Errorf("the short paths were not redacted as the rule says: %v", got)
	}
	deep, _ := got["x"].(map[string]any)[long].(string)
	if !strings.HasPrefix(deep, HMACPrefix) {
		t.Errorf("the value under the long path was recorded as %v, want it redacted whole", got["x"])
	}
	// Just within the bound, the rules still reach inside.
	within := strings.Repeat("k", maxRulePath-len("x.")-len(".cursor"))
	args = map[string]any{"x": map[string]any{within: map[string]any{"title": "t"}}}
	if got := string(r.Redact(args, []string{"*.title"})); strings.Contains(got, `"title":"t"`) {
		t.Errorf("a rule did not reach a path within the bound: %.80s", got)
	}
	// Without rules there are no paths, and nothing is redacted for one.
	args = map[string]any{"x": map[string]any{long: map[string]any{"title": "t"}}}
	if got := string(r.Redact(args, nil)); !strings.Contains(got, `"title":"t"`) {
		t.Errorf("without rules, a long path was redacted: %.80s", got)
	}
}

func TestSensitiveKeyCacheIsBounded(t *testing.T) {
	r := NewRedactor([]byte("k"))
	for i := range maxCachedKeys + 100 {
		r.sensitive(fmt.Sprintf("arg%d", i))
	}
	if n := r.keyCount.Load(); n != maxCachedKeys {
		t.Errorf("%d keys cached, want the bound %d", n, maxCachedKeys)
	}
	// Past the bound, answers are still right.
	if !r.sensitive("late_password") || r.sensitive("late_title") {
		t.Error("uncached keys judged wrongly")
	}
	first := r.sensitive("api_key")
	if cached := r.sensitive("api_key"); !first || !cached {
		t.Error("cached answer differs")
	}
	// Long names are judged, never kept.
	fresh := NewRedactor([]byte("k"))
	long := strings.Repeat("x", maxCachedKeyLen) + "_password"
	if !fresh.sensitive(long) || fresh.keyCount.Load() != 0 {
		t.Errorf("a %d-byte name: judged sensitive %v, %d cached; want true, 0", len(long), fresh.sensitive(long), fresh.keyCount.Load())
	}
}

// Hide replaces in a text what Redact hides of the arguments, however the
// text quotes it, and nothing else.
func TestHide(t *testing.T) {
	r := NewRedactor(testKey(1))
	tests := []struct {
		name  string
		text  string
		args  string
		rules []string
		want  string
	}{
		{
			name: "a sensitive key's value, wherever it stands",
			text: `login refused for {"api_token":"tok-1","user":"ann"}: tok-1 is unknown`,
			args: `{"api_token":"tok-1","user":"ann"}`,
			want: `login refused for {"api_token":"` + Hidden + `","user":"ann"}: ` + Hidden + ` is unknown`,
		},
		{
			name: "as JSON escapes it",
			text: `bad password "a\"b<c" (a"b<c), "a\"b\u003cc"`,
			args: `{"password":"a\"b<c"}`,
			want: `bad password "` + Hidden + `" (` + Hidden + `), "` + Hidden + `"`,
		},
		{
			name: "a hidden object's strings, keys and numbers",
			text: `rejected credentials {"user":"u1","sk-key":7731}`,
			args: `{"credentials":{"user":"u1","sk-key":7731}}`,
			want: `rejected credentials {"` + Hidden + `":"` + Hidden + `","` + Hidden + `":` + Hidden + `}`,
		},
		{
			name:  "a rule's path",
			text:  `no page after cursor c-99 in ws_1`,
			args:  `{"cursor":"c-99","workspace":"ws_1"}`,
			rules: []string{"cursor"},
			want:  `no page after cursor ` + Hidden + ` in ws_1`,
		},
		{
			name: "a value that starts with another",
			text: `tokens abc and abcdef`,
			args: `{"token":"abc","other_token":"abcdef"}`,
			want: `tokens ` + Hidden + ` and ` + Hidden,
		},
		{
			name: "nothing hidden",
			text: `workspace ws_1 is locked`,
			args: `{"workspace":"ws_1","note":""}`,
			want: `workspace ws_1 is locked`,
		},
		{
			name: "an empty secret hides nothing",
			text: `workspace ws_1 is locked`,
			args: `{"password":""}`,
			want: `workspace ws_1 is locked`,
		},
		{
			name: "arguments that do not decode hide it all",
			text: `workspace ws_1 is locked`,
			args: `{"password":`,
			want: Hidden,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := r.Hide(tt.text, json.RawMessage(tt.args), tt.rules); got != tt.want {
				t.Errorf("Hide = %s\nwant   %s", got, tt.want)
			}
		})
	}
}

// Hide cannot look into arguments nested deeper than Redact does: it
// hides the whole text rather than what it can see.
func TestHideTooDeep(t *testing.T) {
	r := NewRedactor(testKey(1))
	args := strings.Repeat(`{"d":`, 2*maxDepth) + `{"password":"p-1"}` + strings.Repeat(`}`, 2*maxDepth)
	if got := r.Hide("refused p-1", json.RawMessage(args), nil); got != Hidden {
		t.Errorf("Hide = %q, want %q", got, Hidden)
	}
}
