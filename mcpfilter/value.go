package mcpfilter

import (
	"encoding/json"
	"strconv"
)

// ValueKind is the JSON type of a [Value].
type ValueKind uint8

const (
	// Absent is the kind of the zero Value: no value at all, as for a
	// member that is not there.
	Absent ValueKind = iota
	Null
	Bool
	Number
	String
	Array
	Object
)

var valueKinds = [...]string{Absent: "absent", Null: "null", Bool: "boolean", Number: "number",
	String: "string", Array: "array", Object: "object"}

func (k ValueKind) String() string {
	if int(k) < len(valueKinds) {
		return valueKinds[k]
	}
	return "ValueKind(" + strconv.Itoa(int(k)) + ")"
}

// Value is a JSON value of a parsed arguments object. The parser lays out
// each arguments object once, in document order, on a tape shared by every
// Value that points into it: the accessors allocate nothing (only Any
// builds a tree), and the tape costs a single allocation per body instead
// of a map, a slice or a boxed string per member.
//
// Members and elements are visited in document order:
//
//	for m := v.First(); m.Exists(); m = m.Next() {
//		use(m.Key(), m)
//	}
//
// The zero Value is [Absent].
type Value struct {
	tape []node
	i    int32
}

// node is one value on a tape. A container is followed by its members or
// elements, each linked to the next by next.
type node struct {
	key  string // the member's key, when the parent is an object
	str  string // a String's decoded text or a Number's literal
	next int32  // index of the next member or element; 0 for the last
	n    int32  // an Object's members or an Array's elements
	kind ValueKind
	b    bool // a Bool's value
}

// Kind is v's JSON type; Absent for the zero Value.
func (v Value) Kind() ValueKind {
	if v.tape == nil {
		return Absent
	}
	return v.tape[v.i].kind
}

// Exists reports whether v is a value, null included.
func (v Value) Exists() bool { return v.tape != nil }

// Str is the decoded text of a String.
func (v Value) Str() (s string, ok bool) {
	if v.Kind() != String {
		return "", false
	}
	return v.tape[v.i].str, true
}

// Number is a Number's literal text, exactly as sent.
func (v Value) Number() (n json.Number, ok bool) {
	if v.Kind() != Number {
		return "", false
	}
	return json.Number(v.tape[v.i].str), true
}

// Bool is a Bool's value.
func (v Value) Bool() (b, ok bool) {
	if v.Kind() != Bool {
		return false, false
	}
	return v.tape[v.i].b, true
}

// Len is the number of an Object's members or an Array's elements; 0 for
// anything else.
func (v Value) Len() int {
	if v.tape == nil {
		return 0
	}
	return int(v.tape[v.i].n)
}

// Key is the key of a member reached through First and Next on an Object;
// "" otherwise.
func (v Value) Key() string {
	if v.tape == nil {
		return ""
	}
	return v.tape[v.i].key
}

// First is an Object's first member or an Array's first element; Absent
// when there is none.
func (v Value) First() Value {
	if v.Len() == 0 {
		return Value{}
	}
	return Value{v.tape, v.i + 1}
}

// Next is the member or element after v in its container; Absent after the
// last.
func (v Value) Next() Value {
	if v.tape == nil || v.tape[v.i].next == 0 {
		return Value{}
	}
	return Value{v.tape, v.tape[v.i].next}
}

// Member is an Object's member named key; Absent if it has none (keys are
// unique: the parser rejects duplicates).
func (v Value) Member(key string) Value {
	if v.Kind() != Object {
		return Value{}
	}
	for m := v.First(); m.Exists(); m = m.Next() {
		if m.tape[m.i].key == key {
			return m
		}
	}
	return Value{}
}

// Any is v as encoding/json decodes into an interface{} with UseNumber:
// map[string]any, []any (empty, not nil, when empty), string, json.Number,
// bool and nil. It is nil for an Absent Value.
func (v Value) Any() any { return v.Tree(nil) }

// Tree is Any with each number given as number returns it; a nil number
// keeps json.Number.
func (v Value) Tree(number func(json.Number) any) any {
	switch v.Kind() {
	case Object:
		m := make(map[string]any, v.Len())
		for e := v.First(); e.Exists(); e = e.Next() {
			m[e.Key()] = e.Tree(number)
		}
		return m
	case Array:
		a := make([]any, 0, v.Len())
		for e := v.First(); e.Exists(); e = e.Next() {
			a = append(a, e.Tree(number))
		}
		return a
	case String:
		return v.tape[v.i].str
	case Number:
		if number != nil {
			return number(json.Number(v.tape[v.i].str))
		}
		return json.Number(v.tape[v.i].str)
	case Bool:
		return v.tape[v.i].b
	}
	return nil
}

// ParseArguments parses data as the arguments object of a tools/call or
// prompts/get, under the same rules as [Parse]: a JSON object and nothing
// after it, no duplicate or case-folded keys, valid UTF-8, and nested no
// deeper than Parse allows inside a message of DefaultMaxDepth. Every
// error is an *[Error].
func ParseArguments(data []byte) (Value, error) {
	p := parserPool.Get().(*parser)
	p.data, p.pos, p.maxDepth, p.immutable, p.skipArgs = data, 0, DefaultMaxDepth, false, false
	v, err := p.argumentsOnly()
	p.release()
	if e, ok := err.(*Error); ok {
		return Value{}, e.finish()
	}
	return v, err
}

func (p *parser) argumentsOnly() (Value, error) {
	p.skipWS()
	if p.pos >= len(p.data) || p.data[p.pos] != '{' {
		return Value{}, p.wrongType(0, ReasonInvalidArguments, "arguments must be an object")
	}
	p.argStr, p.argBase = string(p.data), 0
	// Depth as in a message: the message object, params, then arguments.
	if err := p.build(2, ""); err != nil {
		return Value{}, err
	}
	if p.skipWS(); p.pos < len(p.data) {
		return Value{}, p.trailing()
	}
	return Value{p.takeTape(), 0}, nil
}

// takeTape copies the tape out of the pooled parser, at its final size.
func (p *parser) takeTape() []node {
	t := make([]node, len(p.tape))
	copy(t, p.tape)
	return t
}
