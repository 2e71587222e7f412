package mcpfilter

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestValueAccessors(t *testing.T) {
	v, err := ParseArguments([]byte(`{"s":"x","n":-1.5e3,"t":true,"f":false,"z":null,"a":[1,"two",[]],"o":{"k":{}},"e":{}}`))
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]ValueKind{"s": String, "n": Number, "t": Bool, "f": Bool, "z": Null, "a": Array, "o": Object, "e": Object}
	var order []string
	for m := v.First(); m.Exists(); m = m.Next() {
		order = append(order, m.Key())
		if m.Kind() != kinds[m.Key()] {
			t.Errorf("%s: kind %s, want %s", m.Key(), m.Kind(), kinds[m.Key()])
		}
		// Each accessor answers only for its own kind.
		if _, ok := m.Str(); ok != (m.Kind() == String) {
			t.Errorf("%s: Str ok = %v", m.Key(), ok)
		}
		if _, ok := m.Number(); ok != (m.Kind() == Number) {
			t.Errorf("%s: Number ok = %v", m.Key(), ok)
		}
		if _, ok := m.Bool(); ok != (m.Kind() == Bool) {
			t.Errorf("%s: Bool ok = %v", m.Key(), ok)
		}
	}
	if want := []string{"s", "n", "t", "f", "z", "a", "o", "e"}; !reflect.DeepEqual(order, want) {
		t.Errorf("members visited in order %v, want document order %v", order, want)
	}
	if n, _ := v.Member("n").Number(); n != "-1.5e3" {
		t.Errorf("number literal %q, want it as sent", n)
	}
	if b, _ := v.Member("t").Bool(); !b {
		t.Error("true read as false")
	}
	if b, ok := v.Member("f").Bool(); b || !ok {
		t.Error("false not read as false")
	}

	a := v.Member("a")
	var elems []any
	for e := a.First(); e.Exists(); e = e.Next() {
		if e.Key() != "" {
			t.Errorf("array element has key %q", e.Key())
		}
		elems = append(elems, e.Any())
	}
	if want := []any{json.Number("1"), "two", []any{}}; !reflect.DeepEqual(elems, want) || a.Len() != 3 {
		t.Errorf("elements %#v (Len %d), want %#v", elems, a.Len(), want)
	}
	if a.Member("0").Exists() || a.Member("").Exists() {
		t.Error("Member found something in an array")
	}
	// Skipping a nested container lands on its next sibling.
	if got := v.Member("o").Next().Key(); got != "e" {
		t.Errorf("after o comes %q, want e", got)
	}
	if v.Member("e").First().Exists() || v.Member("e").Len() != 0 {
		t.Error("an empty object has members")
	}
	if v.Member("e").Next().Exists() {
		t.Error("the last member has a next")
	}

	if got := ValueKind(99).String(); got != "ValueKind(99)" {
		t.Errorf("an unknown kind reads %q", got)
	}
	var absent Value
	if absent.Exists() || absent.Kind() != Absent || absent.Len() != 0 || absent.Key() != "" ||
		absent.First().Exists() || absent.Next().Exists() || absent.Member("s").Exists() || absent.Any() != nil {
		t.Error("the zero Value is not absent throughout")
	}
	if v.Member("missing").Exists() {
		t.Error("Member found a key that is not there")
	}
}

func TestParseArguments(t *testing.T) {
	for _, args := range []string{
		`{}`,
		` {"a" : [1, {"b": null}], "c": "caf\u00e9 \ud83d\ude00"} `,
		// As deep as arguments may be inside a message.
		`{"deep":` + nested(DefaultMaxDepth-3) + `}`,
	} {
		v, err := ParseArguments([]byte(args))
		if err != nil {
			t.Errorf("%.40s: %v", args, err)
			continue
		}
		dec := json.NewDecoder(strings.NewReader(args))
		dec.UseNumber()
		var want any
		if err := dec.Decode(&want); err != nil {
			t.Fatal(err)
		}
		// reflect.DeepEqual is linear in depth; cmp only explains a failure.
		if got := v.Any(); !reflect.DeepEqual(want, got) {
			t.Errorf("%.40s: (-encoding/json +Any):\n%s", args, cmp.Diff(want, got))
		}
	}
	for _, tt := range []struct {
		args   string
		reason Reason
	}{
		{``, ReasonInvalidJSON},
		{`null`, ReasonInvalidArguments},
		{`[{"a":1}]`, ReasonInvalidArguments},
		{`"s"`, ReasonInvalidArguments},
		{`{"a":1} {}`, ReasonTrailingData},
		{`{"a":1,"a":2}`, ReasonDuplicateKey},
		{`{"a":{"Key":1,"key":2}}`, ReasonCaseFoldedKey},
		{`{"a":"\ud800"}`, ReasonInvalidSurrogate},
		{"{\"a\":\"\xff\"}", ReasonInvalidUTF8},
		{`{"a":` + nested(DefaultMaxDepth-2) + `}`, ReasonTooDeep},
		{`{"a":01}`, ReasonInvalidJSON},
	} {
		_, err := ParseArguments([]byte(tt.args))
		var e *Error
		if !errors.As(err, &e) || e.Reason != tt.reason {
			t.Errorf("%.40q: err = %v, want reason %s", tt.args, err, tt.reason)
		}
	}
}

// ParseArguments builds its Value from a copy: changing the bytes after
// does not change it.
func TestParseArgumentsCopies(t *testing.T) {
	data := []byte(`{"a":"b"}`)
	v, err := ParseArguments(data)
	if err != nil {
		t.Fatal(err)
	}
	data[6] = 'x'
	if s, _ := v.Member("a").Str(); s != "b" {
		t.Errorf("value changed with the bytes: %q", s)
	}
}

// FuzzParseArguments checks that ParseArguments agrees with Parse reading
// the same object as a tools/call's arguments, and with encoding/json.
func FuzzParseArguments(f *testing.F) {
	for _, s := range []string{`{}`, `{"a":[1,{"b":null}],"c":"\u00e9"}`, `{"a":1,"A":2}`, `[]`, `{"a":1}x`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, args []byte) {
		v, err := ParseArguments(args)
		b, perr := Parse([]byte(call+string(args)+`}}`), nil)
		if err != nil {
			// Parse may accept more: what follows the object can close
			// it and add members to params.
			return
		}
		if perr != nil {
			t.Fatalf("ParseArguments accepted what Parse refuses (%v)", perr)
		}
		if !reflect.DeepEqual(v.Any(), b.Messages[0].Args.Any()) {
			t.Fatalf("ParseArguments and Parse disagree:\n%s", cmp.Diff(v.Any(), b.Messages[0].Args.Any()))
		}
		dec := json.NewDecoder(bytes.NewReader(args))
		dec.UseNumber()
		var want map[string]any
		if err := dec.Decode(&want); err != nil {
			t.Fatalf("encoding/json refuses accepted arguments %q: %v", args, err)
		}
		checkNavigation(t, v, want)
	})
}
