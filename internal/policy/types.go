package policy

import "strings"

// typeSet is a set of JSON types a value may have. Matchers narrow it; an
// empty set means no value could satisfy them all.
type typeSet uint8

const (
	typeNull typeSet = 1 << iota
	typeBool
	typeNumber
	typeString
	typeArray
	typeObject

	scalarType = typeNull | typeBool | typeNumber | typeString
	anyType    = scalarType | typeArray | typeObject
)

var typeNames = []struct {
	t    typeSet
	name string
}{
	{typeString, "a string"}, {typeNumber, "a number"}, {typeBool, "a boolean"},
	{typeArray, "an array"}, {typeObject, "an object"}, {typeNull, "null"},
}

func (t typeSet) String() string {
	if t == anyType {
		return "any value"
	}
	var names []string
	for _, n := range typeNames {
		if t&n.t != 0 {
			names = append(names, n.name)
		}
	}
	if len(names) == 0 {
		return "nothing"
	}
	return strings.Join(names, " or ")
}

func (k ScalarKind) typeSet() typeSet {
	return [...]typeSet{KindNull: typeNull, KindBool: typeBool, KindNumber: typeNumber, KindString: typeString}[k]
}

func (k ScalarKind) article() string {
	return [...]string{KindNull: "null", KindBool: "a boolean", KindNumber: "a number", KindString: "a string"}[k]
}

// schemaTypes maps a JSON Schema "type" keyword to a typeSet.
func schemaTypes(v any) (typeSet, bool) {
	switch v := v.(type) {
	case string:
		switch v {
		case "string":
			return typeString, true
		case "number", "integer":
			return typeNumber, true
		case "boolean":
			return typeBool, true
		case "array":
			return typeArray, true
		case "object":
			return typeObject, true
		case "null":
			return typeNull, true
		}
	case []any:
		var t typeSet
		for _, e := range v {
			et, ok := schemaTypes(e)
			if !ok {
				return 0, false
			}
			t |= et
		}
		return t, len(v) > 0
	}
	return 0, false
}
