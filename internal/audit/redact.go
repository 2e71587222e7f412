package audit

import (
	"bytes"
	"cmp"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"hash"
	"maps"
	"math"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"unicode/utf8"

	"github.com/amgateway/amg/mcpfilter"
)

// HMACPrefix starts every redacted value.
const HMACPrefix = "hmac-sha256:"

// Unencodable replaces a value that cannot be written as JSON faithfully
// (invalid UTF-8, a malformed json.Number, NaN, a cycle, nesting deeper than
// 1000 levels, a type JSON cannot hold). It is never passed through, not even
// approximately, because an approximation of a secret may still be one.
const Unencodable = "[redacted: unencodable]"

const maxDepth = 1000

// Sensitive key names. A key is compared after lowercasing it and removing
// '-', '_', '.' and ' ', so "API-Key", "x_auth_token" and "Authorization"
// all match. Words match anywhere in the name; suffixes only at its end, so
// that "apikey" and "ssh_keys" are sensitive but "keywords" is not. This errs
// towards hiding: "max_tokens" and "primary_key" are redacted too, and replay
// can then only compare them for equality.
var (
	sensitiveWords = []string{
		"password", "passwd", "passphrase", "secret", "token", "authorization",
		"credential", "cookie", "apikey", "privatekey", "accesskey", "bearer",
		"sessionid",
	}
	sensitiveSuffixes = []string{"key", "keys", "auth"}
)

// Redactor replaces sensitive argument values with an HMAC under the
// install's key. It is safe for concurrent use.
type Redactor struct {
	key  []byte
	macs sync.Pool // of hash.Hash: hmac.New allocates and hashes the key each time

	// keys remembers sensitiveKey for argument names seen before: agents
	// send the same few names on every call. Agents choose the names, so
	// the cache stops growing at maxCachedKeys.
	keys     sync.Map // string -> bool
	keyCount atomic.Int64
}

// The cache holds at most maxCachedKeys names of at most maxCachedKeyLen
// bytes: argument names are short, and an agent's long ones would
// otherwise stay in memory for good.
const (
	maxCachedKeys   = 4096
	maxCachedKeyLen = 64
)

func (r *Redactor) sensitive(k string) bool {
	if len(k) > maxCachedKeyLen {
		return sensitiveKey(k)
	}
	if v, ok := r.keys.Load(k); ok {
		return v.(bool)
	}
	hit := sensitiveKey(k)
	if r.keyCount.Load() < maxCachedKeys {
		if _, loaded := r.keys.LoadOrStore(k, hit); !loaded {
			r.keyCount.Add(1)
		}
	}
	return hit
}

// NewRedactor returns a redactor keyed with key, which should be the 32
// random bytes from [LoadOrCreateKey]. It panics if key is empty: an HMAC
// without a secret key would let anyone confirm a guessed password.
func NewRedactor(key []byte) *Redactor {
	if len(key) == 0 {
		panic("audit: NewRedactor: empty key")
	}
	r := &Redactor{key: slices.Clone(key)}
	r.macs.New = func() any { return hmac.New(sha256.New, r.key) }
	return r
}

// Redact returns args as a JSON object in which sensitive values are
// replaced by [Redactor.HMAC] of the value. A value is sensitive if its key
// is a sensitive name (see above) at any depth, or if its dotted argument
// path matches one of rules, the role's redaction globs. A sensitive object
// or array is replaced as a whole.
//
// Paths join object keys with '.'; arrays are transparent, so the objects in
// {"items":[{"token":..}]} are at path "items" and their keys at
// "items.token". Each rule is a path.Match pattern over the whole dotted path,
// matched case-insensitively and with '*' matching any run of characters,
// including '.' and '/':
//
//	"cursor"      the top-level argument cursor only
//	"*.cursor"    a key cursor at any depth below the top
//	"filter.*"    everything inside the argument filter
//	"*secret*"    any path containing "secret"
//
// Other values are kept exactly, numbers with their literal text. Keys are
// written in sorted order. Redact never fails: what it cannot encode becomes
// [Unencodable]. A nil map gives nil.
func (r *Redactor) Redact(args map[string]any, rules []string) json.RawMessage {
	if args == nil {
		return nil
	}
	e := r.state(rules)
	out, err := e.object(make([]byte, 0, 256), args, 0)
	if err != nil {
		return json.RawMessage(`"` + Unencodable + `"`)
	}
	return out
}

// RedactRaw is Redact for arguments as the MCP parser hands them over:
// raw, their exact bytes, and args, what it parsed of them. When nothing in
// args is sensitive it returns raw itself, so the log records exactly what
// the agent sent and the common path skips the re-encoding; line breaks in
// raw, which valid JSON holds only as insignificant whitespace, become
// spaces in a copy, so that a record stays one line. Absent args give nil.
func (r *Redactor) RedactRaw(raw json.RawMessage, args mcpfilter.Value, rules []string) json.RawMessage {
	if !args.Exists() {
		return nil
	}
	e := r.state(rules)
	if len(raw) == 0 || e.anySensitive(args, 0) {
		m, _ := args.Any().(map[string]any)
		return r.Redact(m, rules)
	}
	// Two IndexByte scans, which run at memory speed; ContainsAny goes a
	// byte at a time.
	if bytes.IndexByte(raw, '\n') >= 0 || bytes.IndexByte(raw, '\r') >= 0 {
		raw = bytes.Clone(raw)
		for i, c := range raw {
			if c == '\n' || c == '\r' {
				raw[i] = ' '
			}
		}
	}
	return raw
}

// anySensitive reports whether Redact would replace anything in v, or
// could not encode it; it walks keys in the same way without encoding.
func (e *redactState) anySensitive(v mcpfilter.Value, depth int) bool {
	if depth > maxDepth {
		return true
	}
	switch v.Kind() {
	case mcpfilter.Object:
		for m := v.First(); m.Exists(); m = m.Next() {
			parent := e.push(m.Key())
			hit := e.r.sensitive(m.Key()) || e.matchRule() || e.anySensitive(m, depth+1)
			e.path = e.path[:parent]
			if hit {
				return true
			}
		}
	case mcpfilter.Array:
		for el := v.First(); el.Exists(); el = el.Next() {
			if e.anySensitive(el, depth+1) {
				return true
			}
		}
	}
	return false
}

// Hidden replaces, in a text [Redactor.Hide] gives, each value that Redact
// hides.
const Hidden = "[redacted]"

// Hide returns text, words about a call that may quote its arguments (an
// upstream's error that echoes them), with every string and number that
// Redact hides in args under rules replaced by [Hidden]: a string both as
// it stands and as JSON writes it between quotes, a number as the
// arguments write it. The keys inside a hidden object count as its
// strings. This errs towards hiding as Redact does: a hidden "max_tokens"
// of 1 hides every 1 in text. args is the call's arguments as JSON;
// arguments that do not decode, or that nest deeper than Redact looks,
// hide the whole text.
func (r *Redactor) Hide(text string, args json.RawMessage, rules []string) string {
	if text == "" || len(args) == 0 {
		return text
	}
	dec := json.NewDecoder(bytes.NewReader(args))
	dec.UseNumber()
	var v any
	if dec.Decode(&v) != nil {
		return Hidden
	}
	e := r.state(rules)
	var values []string
	if !e.hidden(v, false, 0, &values) {
		return Hidden
	}
	if len(values) == 0 {
		return text
	}
	olds := make([]string, 0, 2*len(values))
	for _, s := range values {
		olds = append(olds, s)
		if b, err := appendString(nil, s); err == nil {
			olds = append(olds, string(b[1:len(b)-1]))
		}
		if b, err := json.Marshal(s); err == nil { // as encoding/json escapes it: <, > and & too
			olds = append(olds, string(b[1:len(b)-1]))
		}
	}
	// The longest first: the replacer tries them in order at each place,
	// and a value may start with another.
	slices.SortFunc(olds, func(a, b string) int { return cmp.Or(len(b)-len(a), strings.Compare(a, b)) })
	olds = slices.Compact(olds)
	pairs := make([]string, 0, 2*len(olds))
	for _, s := range olds {
		if s != "" {
			pairs = append(pairs, s, Hidden)
		}
	}
	return strings.NewReplacer(pairs...).Replace(text)
}

// hidden appends to values the strings and numbers of v that Redact
// hides: all of them, keys included, when hide is set, else those under a
// sensitive key or a rule's path. It reports false for a value nested too
// deep to look into.
func (e *redactState) hidden(v any, hide bool, depth int, values *[]string) bool {
	if depth > maxDepth {
		return false
	}
	switch v := v.(type) {
	case string:
		if hide {
			*values = append(*values, v)
		}
	case json.Number:
		if hide {
			*values = append(*values, string(v))
		}
	case []any:
		for _, el := range v {
			if !e.hidden(el, hide, depth+1, values) {
				return false
			}
		}
	case map[string]any:
		for k, el := range v {
			if hide {
				*values = append(*values, k)
			}
			parent := e.push(k)
			ok := e.hidden(el, hide || e.r.sensitive(k) || e.matchRule(), depth+1, values)
			e.path = e.path[:parent]
			if !ok {
				return false
			}
		}
	}
	return true
}

// HMAC returns "hmac-sha256:<hex>" of value's canonical JSON: object keys
// sorted, no insignificant space, numbers in their shortest exact decimal
// form (so json.Number("1e2"), 100 and 100.0 agree). value may be anything
// Redact accepts, any Go number, or anything encoding/json can marshal. It
// returns [Unencodable] for a value that has no JSON form.
func (r *Redactor) HMAC(value any) string {
	c, err := canonical(nil, value, 0)
	if err != nil {
		return Unencodable
	}
	return r.sum(c)
}

func (r *Redactor) sum(canon []byte) string {
	m := r.macs.Get().(hash.Hash)
	m.Reset()
	m.Write(canon)
	var sum [sha256.Size]byte
	m.Sum(sum[:0])
	r.macs.Put(m)
	var buf [len(HMACPrefix) + 2*sha256.Size]byte
	n := copy(buf[:], HMACPrefix)
	hex.Encode(buf[n:], sum[:])
	return string(buf[:])
}

type redactState struct {
	r     *Redactor
	rules []string // folded by foldPath
	// path is the dotted path of the current value, each key folded by
	// foldPath as it is pushed; only kept when there are rules.
	path  []byte
	canon []byte // scratch for canonical encodings
}

// maxRulePath bounds the dotted path a rule is matched against: a value
// whose path is longer is redacted whole, without a look inside. No tool's
// arguments are that deep; an agent could make them so, so that every key
// below cost a match against a long path (a 1 MB body of many keys under
// a 100 KB one took minutes).
const maxRulePath = 1 << 10

var errUnencodable = errors.New("value has no faithful JSON encoding")

// state prepares a walk over arguments under the role's redaction rules.
func (r *Redactor) state(rules []string) redactState {
	e := redactState{r: r}
	if len(rules) > 0 {
		e.rules = make([]string, len(rules))
		for i, g := range rules {
			e.rules[i] = foldPath(g)
		}
		e.path = make([]byte, 0, 64)
	}
	return e
}

// push appends key k, folded, to the dotted path, when rules need it, and
// returns the length to cut the path back to afterwards. A path already
// past maxRulePath is not grown: its value is redacted whole.
func (e *redactState) push(k string) int {
	parent := len(e.path)
	if e.rules != nil && parent <= maxRulePath {
		if parent > 0 {
			e.path = append(e.path, '.')
		}
		e.path = append(e.path, foldPath(k)...)
	}
	return parent
}

func (e *redactState) object(b []byte, m map[string]any, depth int) ([]byte, error) {
	if depth > maxDepth {
		return nil, errUnencodable
	}
	keys := slices.Sorted(maps.Keys(m))
	b = append(b, '{')
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		var err error
		if b, err = appendString(b, k); err != nil {
			return nil, err
		}
		b = append(b, ':')
		parent := e.push(k)
		b = e.member(b, k, m[k], depth+1)
		e.path = e.path[:parent]
	}
	return append(b, '}'), nil
}

// member appends the value of key k, whose path is e.path. A value that
// cannot be encoded is replaced here rather than failing the whole object, so
// one bad value does not hide the others.
func (e *redactState) member(b []byte, k string, v any, depth int) []byte {
	if e.r.sensitive(k) || e.matchRule() {
		var err error
		e.canon, err = canonical(e.canon[:0], v, depth)
		if err != nil {
			return appendMarker(b)
		}
		b = append(b, '"')
		b = append(b, e.r.sum(e.canon)...)
		return append(b, '"')
	}
	out, err := e.value(b, v, depth)
	if err != nil {
		return appendMarker(b)
	}
	return out
}

// value appends v, redacting inside objects. On error b's prefix is intact
// but the returned slice must not be used.
func (e *redactState) value(b []byte, v any, depth int) ([]byte, error) {
	switch v := v.(type) {
	case map[string]any:
		return e.object(b, v, depth)
	case []any:
		if depth > maxDepth {
			return nil, errUnencodable
		}
		b = append(b, '[')
		for i, el := range v {
			if i > 0 {
				b = append(b, ',')
			}
			var err error
			if b, err = e.value(b, el, depth+1); err != nil {
				return nil, err
			}
		}
		return append(b, ']'), nil
	case json.Number:
		if _, ok := parseNumber(string(v)); !ok {
			return nil, errUnencodable
		}
		return append(b, v...), nil
	case string, nil, bool, float64, float32, int, int8, int16, int32, int64, uint, uint8, uint16, uint32, uint64:
		return canonical(b, v, depth)
	default:
		// Not what the MCP parser produces, but a caller may hand over any
		// Go value: take its JSON form and redact that, so keys inside it
		// are still checked.
		g, err := generic(v)
		if err != nil {
			return nil, err
		}
		return e.value(b, g, depth)
	}
}

func (e *redactState) matchRule() bool {
	switch {
	case len(e.rules) == 0:
		return false
	case len(e.path) > maxRulePath:
		return true
	}
	p := string(e.path)
	for _, g := range e.rules {
		// A malformed rule redacts rather than protecting nothing.
		if ok, err := path.Match(g, p); ok || err != nil {
			return true
		}
	}
	return false
}

// foldPath prepares a glob or a path for matching: lowercase, so that
// "Cursor" cannot slip past a rule for "cursor", and '/' replaced by a byte
// path.Match gives no meaning, so that '*' also crosses a '/' inside a key.
func foldPath(s string) string {
	s = strings.ToLower(s)
	if strings.IndexByte(s, '/') >= 0 {
		s = strings.ReplaceAll(s, "/", "\x00")
	}
	return s
}

func appendMarker(b []byte) []byte {
	return append(append(append(b, '"'), Unencodable...), '"')
}

func sensitiveKey(k string) bool {
	var buf [64]byte
	n := buf[:0]
	for i := 0; i < len(k); i++ {
		c := k[i]
		switch {
		case c >= utf8.RuneSelf:
			return sensitiveName(normalizeKey(k))
		case c == '-' || c == '_' || c == '.' || c == ' ':
			continue
		case 'A' <= c && c <= 'Z':
			c += 'a' - 'A'
		}
		n = append(n, c)
	}
	return sensitiveName(string(n))
}

// normalizeKey is sensitiveKey's slow path for non-ASCII names.
func normalizeKey(k string) string {
	return strings.Map(func(r rune) rune {
		switch r {
		case '-', '_', '.', ' ':
			return -1
		}
		return r
	}, strings.ToLower(k))
}

func sensitiveName(n string) bool {
	for _, w := range sensitiveWords {
		if strings.Contains(n, w) {
			return true
		}
	}
	for _, s := range sensitiveSuffixes {
		if strings.HasSuffix(n, s) {
			return true
		}
	}
	return false
}

// canonical appends v's canonical JSON (see [Redactor.HMAC]).
func canonical(b []byte, v any, depth int) ([]byte, error) {
	if depth > maxDepth {
		return nil, errUnencodable
	}
	switch v := v.(type) {
	case nil:
		return append(b, "null"...), nil
	case bool:
		return strconv.AppendBool(b, v), nil
	case string:
		return appendString(b, v)
	case json.Number:
		n, ok := parseNumber(string(v))
		if !ok {
			return nil, errUnencodable
		}
		return n.appendCanonical(b), nil
	case float64:
		return appendFloat(b, v)
	case float32:
		return appendFloat(b, float64(v))
	case int:
		return strconv.AppendInt(b, int64(v), 10), nil
	case int8:
		return strconv.AppendInt(b, int64(v), 10), nil
	case int16:
		return strconv.AppendInt(b, int64(v), 10), nil
	case int32:
		return strconv.AppendInt(b, int64(v), 10), nil
	case int64:
		return strconv.AppendInt(b, v, 10), nil
	case uint:
		return strconv.AppendUint(b, uint64(v), 10), nil
	case uint8:
		return strconv.AppendUint(b, uint64(v), 10), nil
	case uint16:
		return strconv.AppendUint(b, uint64(v), 10), nil
	case uint32:
		return strconv.AppendUint(b, uint64(v), 10), nil
	case uint64:
		return strconv.AppendUint(b, v, 10), nil
	case []any:
		b = append(b, '[')
		for i, el := range v {
			if i > 0 {
				b = append(b, ',')
			}
			var err error
			if b, err = canonical(b, el, depth+1); err != nil {
				return nil, err
			}
		}
		return append(b, ']'), nil
	case map[string]any:
		keys := slices.Sorted(maps.Keys(v))
		b = append(b, '{')
		for i, k := range keys {
			if i > 0 {
				b = append(b, ',')
			}
			var err error
			if b, err = appendString(b, k); err != nil {
				return nil, err
			}
			b = append(b, ':')
			if b, err = canonical(b, v[k], depth+1); err != nil {
				return nil, err
			}
		}
		return append(b, '}'), nil
	default:
		g, err := generic(v)
		if err != nil {
			return nil, err
		}
		return canonical(b, g, depth)
	}
}

// generic converts any Go value to the shapes the MCP parser produces by a
// round trip through encoding/json.
func generic(v any) (any, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, errUnencodable
	}
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.UseNumber()
	var g any
	if err := dec.Decode(&g); err != nil {
		return nil, errUnencodable
	}
	return g, nil
}

func appendFloat(b []byte, f float64) ([]byte, error) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return nil, errUnencodable
	}
	n, _ := parseNumber(strconv.FormatFloat(f, 'g', -1, 64))
	return n.appendCanonical(b), nil
}

// appendString appends s as a JSON string, escaping only what JSON requires
// (as RFC 8785 does). Invalid UTF-8 is an error: replacing it with U+FFFD,
// as encoding/json does, would give two different values one encoding.
func appendString(b []byte, s string) ([]byte, error) {
	if !utf8.ValidString(s) {
		return nil, errUnencodable
	}
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		b = appendEscapedByte(append(b, s[start:i]...), c)
		start = i + 1
	}
	b = append(b, s[start:]...)
	return append(b, '"'), nil
}

// number is a JSON number literal taken apart: ±0.digits × 10^point, with
// digits free of leading and trailing zeros (empty for zero).
type number struct {
	neg    bool
	digits string
	point  int64
	// raw is set instead when the exponent is too large to normalise; the
	// literal text is then its own canonical form.
	raw string
}

// parseNumber checks s against the JSON number grammar and normalises it.
func parseNumber(s string) (number, bool) {
	var n number
	i := 0
	if i < len(s) && s[i] == '-' {
		n.neg = true
		i++
	}
	intStart := i
	switch {
	case i < len(s) && s[i] == '0':
		i++
	case i < len(s) && '1' <= s[i] && s[i] <= '9':
		for i < len(s) && isDigit(s[i]) {
			i++
		}
	default:
		return n, false
	}
	intPart := s[intStart:i]
	var frac string
	if i < len(s) && s[i] == '.' {
		i++
		start := i
		for i < len(s) && isDigit(s[i]) {
			i++
		}
		if i == start {
			return n, false
		}
		frac = s[start:i]
	}
	var exp int64
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		start := i
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		digitsStart := i
		for i < len(s) && isDigit(s[i]) {
			i++
		}
		if i == digitsStart {
			return n, false
		}
		var err error
		exp, err = strconv.ParseInt(s[start:i], 10, 64)
		if err != nil || exp > 1<<40 || exp < -(1<<40) {
			if i != len(s) {
				return n, false
			}
			n.raw = s
			return n, true
		}
	}
	if i != len(s) {
		return n, false
	}
	digits := strings.TrimLeft(intPart+frac, "0")
	point := int64(len(intPart)) - int64(len(intPart+frac)-len(digits)) + exp
	digits = strings.TrimRight(digits, "0")
	if digits == "" {
		return number{}, true // -0 and 0.000e5 are 0
	}
	n.digits, n.point = digits, point
	return n, true
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// appendCanonical formats n as ECMAScript formats a number (the form RFC 8785
// uses), but from the exact decimal, so large integers keep every digit.
func (n number) appendCanonical(b []byte) []byte {
	if n.raw != "" {
		return append(b, n.raw...)
	}
	if n.digits == "" {
		return append(b, '0')
	}
	if n.neg {
		b = append(b, '-')
	}
	d, k, p := n.digits, int64(len(n.digits)), n.point
	switch {
	case k <= p && p <= 21:
		b = append(b, d...)
		for range p - k {
			b = append(b, '0')
		}
	case 0 < p && p <= 21:
		b = append(append(append(b, d[:p]...), '.'), d[p:]...)
	case -6 < p && p <= 0:
		b = append(b, '0', '.')
		for range -p {
			b = append(b, '0')
		}
		b = append(b, d...)
	default:
		b = append(b, d[0])
		if k > 1 {
			b = append(append(b, '.'), d[1:]...)
		}
		b = append(b, 'e')
		if p-1 >= 0 {
			b = append(b, '+')
		}
		b = strconv.AppendInt(b, p-1, 10)
	}
	return b
}
