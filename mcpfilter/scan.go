package mcpfilter

import (
	"bytes"
	"encoding/binary"
	"hash/maphash"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// parser is a single-pass recursive-descent validator over one body: every
// byte of an accepted body has been checked against the JSON grammar, UTF-8
// and the key rules, and values are decoded only where the gateway reads
// them.
type parser struct {
	data     []byte
	pos      int
	maxDepth int
	// immutable: the caller promised not to modify data, so argStr may
	// alias it (Options.ImmutableBody).
	immutable bool
	// skipArgs: validate arguments but build no Args (Options.SkipArgs).
	skipArgs bool

	// keys is a stack holding the keys of every object currently open, so
	// that duplicates are found without a map per object. An object owns
	// keys[base:] while its members are parsed; a nested object pushes above
	// and pops before the next key of its parent is added.
	keys []keyEntry

	// tape is where arguments objects are laid out as they are parsed (see
	// Value); it is copied out at its final size when the body is accepted.
	tape []node

	// argStr is a copy of the body from argBase on, made at the first
	// arguments object, from which the tape takes substrings: one
	// allocation for all unescaped keys, strings and numbers instead of one
	// each. It is a copy so that Args does not change with the body.
	argStr  string
	argBase int

	scratch []byte
}

type keyEntry struct {
	key  []byte // decoded; aliases the body unless the key had escapes
	hash uint64 // of the case-folded key, see foldHash
}

// keySet is the state of one open object.
type keySet struct {
	base int
	n    int
	// big replaces the linear scan once an object has many keys, so that a
	// body of a million keys costs O(n) and not O(n²). It maps the seeded
	// hash of a folded key to the key's index in parser.keys; the seed is
	// random per process, so keys cannot be chosen to collide.
	big map[uint64]int
}

var bigSeed = maphash.MakeSeed()

// bigObject is the number of keys from which an object switches to a map.
// The linear scan compares one precomputed hash per key; BenchmarkKeyCheck
// has it faster than the map up to about 256 keys. The switch comes earlier
// to bound what a body made of many objects just under the limit can cost.
const bigObject = 64

// keyTok is one decoded object key.
type keyTok struct {
	dec        []byte
	off        int // offset of the opening quote
	start, end int // raw bytes between the quotes
	esc        bool
}

func (p *parser) errAt(r Reason, off int, detail string) error {
	return &Error{Reason: r, Offset: off, detail: detail}
}

func (p *parser) skipWS() {
	for p.pos < len(p.data) {
		switch p.data[p.pos] {
		case ' ', '\t', '\n', '\r':
			p.pos++
		default:
			return
		}
	}
}

// unexpected reports that the byte at p.pos cannot start what was expected.
// It never echoes the byte: it might be part of an unquoted secret.
func (p *parser) unexpected(expected string) error {
	if p.pos >= len(p.data) {
		return p.errAt(ReasonInvalidJSON, p.pos, "unexpected end of input, expected "+expected)
	}
	if c := p.data[p.pos]; c >= utf8.RuneSelf {
		if r, size := utf8.DecodeRune(p.data[p.pos:]); r == utf8.RuneError && size == 1 {
			return p.errAt(ReasonInvalidUTF8, p.pos, "invalid UTF-8 outside a string")
		}
	}
	return p.errAt(ReasonInvalidJSON, p.pos, "expected "+expected)
}

// strSafe marks the bytes a string may contain as they are: printable ASCII
// other than the quote and the backslash.
var strSafe = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// special8 reports whether any of the eight bytes in v is not strSafe: a
// quote, a backslash, a control character or a byte of a multi-byte UTF-8
// sequence. It may report a byte that is safe (the caller then looks at
// each byte), never miss one that is not.
func special8(v uint64) bool {
	const lo, hi = 0x0101010101010101, 0x8080808080808080
	hasZero := func(x uint64) uint64 { return (x - lo) &^ x & hi }
	return (hasZero(v^(lo*'"')) | hasZero(v^(lo*'\\')) | (v-lo*0x20)&^v&hi | v&hi) != 0
}

// scanString validates the string starting at p.pos (which is '"') and
// returns the bounds of its raw contents and whether it holds escapes.
func (p *parser) scanString() (start, end int, esc bool, err error) {
	data := p.data
	open := p.pos
	i := open + 1
	start = i
	for {
		// Eight bytes at a time while none of them needs a closer look;
		// argument strings are long and mostly plain ASCII.
		for i+8 <= len(data) && !special8(binary.LittleEndian.Uint64(data[i:])) {
			i += 8
		}
		for i < len(data) && strSafe[data[i]] {
			i++
		}
		if i >= len(data) {
			return 0, 0, false, p.errAt(ReasonInvalidJSON, open, "unterminated string")
		}
		switch c := data[i]; {
		case c == '"':
			p.pos = i + 1
			return start, i, esc, nil
		case c == '\\':
			esc = true
			n, err := p.checkEscape(i, open)
			if err != nil {
				return 0, 0, false, err
			}
			i += n
		case c < 0x20:
			return 0, 0, false, p.errAt(ReasonControlInString, i, "unescaped control character in string")
		default:
			r, size := utf8.DecodeRune(data[i:])
			if r == utf8.RuneError && size == 1 {
				return 0, 0, false, p.errAt(ReasonInvalidUTF8, i, "invalid UTF-8 in string")
			}
			i += size
		}
	}
}

// checkEscape validates the escape at data[i] == '\\' and returns its length.
// Surrogates must come as a high-low pair: a lone one decodes to U+FFFD in
// encoding/json but may be kept, dropped or rejected by other decoders.
func (p *parser) checkEscape(i, open int) (int, error) {
	data := p.data
	if i+1 >= len(data) {
		return 0, p.errAt(ReasonInvalidJSON, open, "unterminated string")
	}
	switch data[i+1] {
	case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
		return 2, nil
	case 'u':
	default:
		return 0, p.errAt(ReasonInvalidEscape, i, "invalid escape sequence in string")
	}
	r, ok := hex4(data, i+2)
	if !ok {
		return 0, p.errAt(ReasonInvalidEscape, i, `invalid \u escape in string`)
	}
	if !utf16.IsSurrogate(r) {
		return 6, nil
	}
	if r >= 0xDC00 {
		return 0, p.errAt(ReasonInvalidSurrogate, i, `unpaired low surrogate in \u escape`)
	}
	if i+7 < len(data) && data[i+6] == '\\' && data[i+7] == 'u' {
		r2, ok := hex4(data, i+8)
		if !ok {
			return 0, p.errAt(ReasonInvalidEscape, i+6, `invalid \u escape in string`)
		}
		if r2 >= 0xDC00 && r2 <= 0xDFFF {
			return 12, nil
		}
	}
	return 0, p.errAt(ReasonInvalidSurrogate, i, `high surrogate in \u escape is not followed by a low surrogate`)
}

func hex4(data []byte, i int) (rune, bool) {
	if i+4 > len(data) {
		return 0, false
	}
	var r rune
	for _, c := range data[i : i+4] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			c = c - 'A' + 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

// unescape appends the decoded form of the raw contents s of a string that
// scanString accepted.
func unescape(dst, s []byte) []byte {
	for i := 0; i < len(s); {
		if s[i] != '\\' {
			j := bytes.IndexByte(s[i:], '\\')
			if j < 0 {
				return append(dst, s[i:]...)
			}
			dst = append(dst, s[i:i+j]...)
			i += j
			continue
		}
		c := s[i+1]
		i += 2
		switch c {
		case 'b':
			dst = append(dst, '\b')
		case 'f':
			dst = append(dst, '\f')
		case 'n':
			dst = append(dst, '\n')
		case 'r':
			dst = append(dst, '\r')
		case 't':
			dst = append(dst, '\t')
		case 'u':
			r, _ := hex4(s, i)
			i += 4
			if utf16.IsSurrogate(r) {
				r2, _ := hex4(s, i+2)
				r = utf16.DecodeRune(r, r2)
				i += 6
			}
			dst = utf8.AppendRune(dst, r)
		default: // '"', '\\', '/'
			dst = append(dst, c)
		}
	}
	return dst
}

// str scans a string and returns its decoded bytes, which alias the body
// unless the string had escapes.
func (p *parser) str() ([]byte, error) {
	start, end, esc, err := p.scanString()
	if err != nil {
		return nil, err
	}
	if !esc {
		return p.data[start:end], nil
	}
	return unescape(make([]byte, 0, end-start), p.data[start:end]), nil
}

// scanNumber validates the number at p.pos against the JSON grammar and
// reports whether it is an integer (no fraction, no exponent).
func (p *parser) scanNumber() (integer bool, err error) {
	data := p.data
	start := p.pos
	i := start
	if i < len(data) && data[i] == '-' {
		i++
	}
	bad := func() error { return p.errAt(ReasonInvalidJSON, start, "invalid number") }
	switch {
	case i < len(data) && data[i] == '0':
		i++
	case i < len(data) && '1' <= data[i] && data[i] <= '9':
		for i < len(data) && isDigit(data[i]) {
			i++
		}
	default:
		return false, bad()
	}
	integer = true
	if i < len(data) && data[i] == '.' {
		integer = false
		i++
		if i >= len(data) || !isDigit(data[i]) {
			return false, bad()
		}
		for i < len(data) && isDigit(data[i]) {
			i++
		}
	}
	if i < len(data) && (data[i] == 'e' || data[i] == 'E') {
		integer = false
		i++
		if i < len(data) && (data[i] == '+' || data[i] == '-') {
			i++
		}
		if i >= len(data) || !isDigit(data[i]) {
			return false, bad()
		}
		for i < len(data) && isDigit(data[i]) {
			i++
		}
	}
	p.pos = i
	return integer, nil
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

func (p *parser) literal(lit string) error {
	if len(p.data)-p.pos >= len(lit) && string(p.data[p.pos:p.pos+len(lit)]) == lit {
		p.pos += len(lit)
		return nil
	}
	return p.errAt(ReasonInvalidJSON, p.pos, "invalid literal")
}

// value validates any value at p.pos; depth is the number of containers
// enclosing it.
func (p *parser) value(depth int) error {
	if p.pos >= len(p.data) {
		return p.unexpected("a value")
	}
	switch c := p.data[p.pos]; c {
	case '{':
		return p.skipObject(depth + 1)
	case '[':
		return p.skipArray(depth + 1)
	case '"':
		_, _, _, err := p.scanString()
		return err
	case 't':
		return p.literal("true")
	case 'f':
		return p.literal("false")
	case 'n':
		return p.literal("null")
	default:
		if c == '-' || isDigit(c) {
			_, err := p.scanNumber()
			return err
		}
		return p.unexpected("a value")
	}
}

// wrongType validates the value at p.pos, so that malformed JSON is still
// reported as such, and then rejects it for having the wrong type.
func (p *parser) wrongType(depth int, r Reason, detail string) error {
	start := p.pos
	if err := p.value(depth); err != nil {
		return err
	}
	return p.errAt(r, start, detail)
}

func (p *parser) tooDeep() error {
	return p.errAt(ReasonTooDeep, p.pos, "nesting deeper than "+strconv.Itoa(p.maxDepth)+" levels")
}

// beginObject consumes the '{' at p.pos of an object at the given depth.
func (p *parser) beginObject(depth int) (keySet, error) {
	if depth > p.maxDepth {
		return keySet{}, p.tooDeep()
	}
	p.pos++
	return keySet{base: len(p.keys)}, nil
}

// nextKey reads up to and including the ':' after the next key of the
// object and leaves p.pos at the start of the value. ok is false once the
// closing '}' has been consumed.
func (p *parser) nextKey(ks *keySet) (k keyTok, ok bool, err error) {
	p.skipWS()
	if p.pos >= len(p.data) {
		if ks.n > 0 {
			return k, false, p.unexpected("',' or '}' after object member")
		}
		return k, false, p.unexpected("a string key or '}'")
	}
	c := p.data[p.pos]
	if c == '}' {
		p.pos++
		// Cleared so that a pooled parser does not keep the body alive.
		clear(p.keys[ks.base:])
		p.keys = p.keys[:ks.base]
		return k, false, nil
	}
	if ks.n > 0 {
		if c != ',' {
			return k, false, p.unexpected("',' or '}' after object member")
		}
		p.pos++
		p.skipWS()
		if p.pos >= len(p.data) || p.data[p.pos] != '"' {
			return k, false, p.unexpected("a string key")
		}
	} else if c != '"' {
		return k, false, p.unexpected("a string key or '}'")
	}
	k.off = p.pos
	k.start, k.end, k.esc, err = p.scanString()
	if err != nil {
		return k, false, err
	}
	k.dec = p.data[k.start:k.end]
	if k.esc {
		k.dec = unescape(make([]byte, 0, k.end-k.start), k.dec)
	}
	p.skipWS()
	if p.pos >= len(p.data) || p.data[p.pos] != ':' {
		return k, false, p.unexpected("':' after object key")
	}
	p.pos++
	p.skipWS()
	if err := p.addKey(ks, k.dec, k.off); err != nil {
		return k, false, err
	}
	ks.n++
	return k, true, nil
}

func (p *parser) skipObject(depth int) error { return p.skipObjectNoting(depth, nil) }

// skipObjectNoting is skipObject that, given isError, also sets it when
// the object has a member "isError" whose value is true, as a failed
// tool's result does.
func (p *parser) skipObjectNoting(depth int, isError *bool) error {
	ks, err := p.beginObject(depth)
	if err != nil {
		return err
	}
	for {
		k, ok, err := p.nextKey(&ks)
		if !ok {
			return err
		}
		if isError != nil && string(k.dec) == "isError" && bytes.HasPrefix(p.data[p.pos:], []byte("true")) {
			*isError = true
		}
		if err := p.value(depth); err != nil {
			return withKey(err, k.dec)
		}
	}
}

// arrayNext moves past the separator after element i of an array and
// reports whether another element follows.
func (p *parser) arrayNext() (more bool, err error) {
	p.skipWS()
	if p.pos >= len(p.data) {
		return false, p.unexpected("',' or ']' after array element")
	}
	switch p.data[p.pos] {
	case ',':
		p.pos++
		p.skipWS()
		return true, nil
	case ']':
		p.pos++
		return false, nil
	}
	return false, p.unexpected("',' or ']' after array element")
}

// beginArray consumes the '[' at p.pos and reports whether the array is
// empty (its ']' consumed too).
func (p *parser) beginArray(depth int) (empty bool, err error) {
	if depth > p.maxDepth {
		return false, p.tooDeep()
	}
	p.pos++
	p.skipWS()
	if p.pos < len(p.data) && p.data[p.pos] == ']' {
		p.pos++
		return true, nil
	}
	return false, nil
}

func (p *parser) skipArray(depth int) error {
	empty, err := p.beginArray(depth)
	if err != nil || empty {
		return err
	}
	for i := 0; ; i++ {
		if err := p.value(depth); err != nil {
			return withIndex(err, i)
		}
		more, err := p.arrayNext()
		if err != nil || !more {
			return err
		}
	}
}

// addKey rejects key if the object already has it, compared after decoding
// escapes and under the case folding encoding/json uses to match struct
// fields: an upstream would read either spelling as the same field, so
// which one the gateway checked would be a matter of luck.
func (p *parser) addKey(ks *keySet, key []byte, off int) error {
	if bytes.IndexByte(key, 0) >= 0 {
		// Decoders that work on C strings would read a shorter key.
		return p.errAt(ReasonNULInKey, off, "key "+quote(string(key))+" contains a NUL character")
	}
	if ks.big != nil {
		return p.addBigKey(ks, key, off)
	}
	h := foldHash(key)
	if err := p.scanKeys(ks, key, h, off); err != nil {
		return err
	}
	p.keys = append(p.keys, keyEntry{key: key, hash: h})
	if len(p.keys)-ks.base >= bigObject {
		ks.big = make(map[uint64]int, 2*bigObject)
		for j := ks.base; j < len(p.keys); j++ {
			ks.big[p.bigHash(p.keys[j].key)] = j
		}
	}
	return nil
}

// scanKeys compares key with every key of the object so far.
func (p *parser) scanKeys(ks *keySet, key []byte, h uint64, off int) error {
	for j := ks.base; j < len(p.keys); j++ {
		if e := &p.keys[j]; e.hash == h && bytes.EqualFold(e.key, key) {
			return p.keyClash(e.key, key, off)
		}
	}
	return nil
}

func (p *parser) addBigKey(ks *keySet, key []byte, off int) error {
	h, bh := foldHash(key), p.bigHash(key)
	j, ok := ks.big[bh]
	switch {
	case !ok:
		ks.big[bh] = len(p.keys)
	case bytes.EqualFold(p.keys[j].key, key):
		return p.keyClash(p.keys[j].key, key, off)
	default:
		// Two different keys with one 64-bit hash: too rare to optimise,
		// but the answer must still be right. The key stays out of the
		// map, so any later key that equals it hashes here and is also
		// checked by the full scan.
		if err := p.scanKeys(ks, key, h, off); err != nil {
			return err
		}
	}
	p.keys = append(p.keys, keyEntry{key: key, hash: h})
	return nil
}

func (p *parser) bigHash(key []byte) uint64 {
	p.scratch = appendFolded(p.scratch[:0], key)
	return maphash.Bytes(bigSeed, p.scratch)
}

func (p *parser) keyClash(prev, key []byte, off int) error {
	if bytes.Equal(prev, key) {
		return p.errAt(ReasonDuplicateKey, off, "duplicate key "+quote(string(key)))
	}
	return p.errAt(ReasonCaseFoldedKey, off,
		"key "+quote(string(key))+" is a case-insensitive duplicate of key "+quote(string(prev)))
}

// build validates the value at p.pos and appends it to the tape, after
// everything before it and followed by everything in it. key is its key
// in the object being built, if any.
func (p *parser) build(depth int, key string) error {
	if p.pos >= len(p.data) {
		return p.unexpected("a value")
	}
	i := len(p.tape)
	p.tape = append(p.tape, node{key: key})
	var err error
	switch c := p.data[p.pos]; c {
	case '{':
		p.tape[i].kind = Object
		err = p.buildObject(depth+1, i, false)
	case '[':
		p.tape[i].kind = Array
		err = p.buildArray(depth+1, i)
	case '"':
		start, end, esc, serr := p.scanString()
		if serr != nil {
			return serr
		}
		p.tape[i].kind, p.tape[i].str = String, p.argString(start, end, esc)
	case 't':
		p.tape[i].kind, p.tape[i].b = Bool, true
		err = p.literal("true")
	case 'f':
		p.tape[i].kind = Bool
		err = p.literal("false")
	case 'n':
		p.tape[i].kind = Null
		err = p.literal("null")
	default:
		if c != '-' && !isDigit(c) {
			return p.unexpected("a value")
		}
		start := p.pos
		if _, err := p.scanNumber(); err != nil {
			return err
		}
		p.tape[i].kind, p.tape[i].str = Number, p.argStr[start-p.argBase:p.pos-p.argBase]
	}
	return err
}

// argString returns the decoded string whose raw contents are
// data[start:end], sharing p.argStr when there is nothing to decode.
func (p *parser) argString(start, end int, esc bool) string {
	if !esc {
		return p.argStr[start-p.argBase : end-p.argBase]
	}
	p.scratch = unescape(p.scratch[:0], p.data[start:end])
	return string(p.scratch)
}

// buildObject lays out the members of the object at p.pos, whose node is
// tape[at]. With stringsOnly, every member must be a string (prompt
// arguments).
func (p *parser) buildObject(depth, at int, stringsOnly bool) error {
	ks, err := p.beginObject(depth)
	if err != nil {
		return err
	}
	prev := -1
	for {
		k, ok, err := p.nextKey(&ks)
		if !ok {
			return err
		}
		if stringsOnly && (p.pos >= len(p.data) || p.data[p.pos] != '"') {
			err := p.wrongType(depth, ReasonInvalidArguments, "prompt argument values must be strings")
			return withKey(err, k.dec)
		}
		var key string
		if k.esc {
			key = string(k.dec)
		} else {
			key = p.argStr[k.start-p.argBase : k.end-p.argBase]
		}
		prev = p.link(at, prev)
		if err := p.build(depth, key); err != nil {
			return withKey(err, k.dec)
		}
	}
}

// link counts the member or element about to be appended in the container
// tape[at], links the one before it, prev (-1 for none), to it, and
// returns its index.
func (p *parser) link(at, prev int) int {
	i := len(p.tape)
	if prev >= 0 {
		p.tape[prev].next = int32(i)
	}
	p.tape[at].n++
	return i
}

func (p *parser) buildArray(depth, at int) error {
	empty, err := p.beginArray(depth)
	if err != nil || empty {
		return err
	}
	prev := -1
	for i := 0; ; i++ {
		prev = p.link(at, prev)
		if err := p.build(depth, ""); err != nil {
			return withIndex(err, i)
		}
		more, err := p.arrayNext()
		if err != nil || !more {
			return err
		}
	}
}
