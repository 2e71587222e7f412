package policy

// Hint is one of the MCP tool annotation hints.
type Hint uint8

// The tool annotation hints of the MCP specification.
const (
	ReadOnlyHint Hint = iota
	DestructiveHint
	IdempotentHint
	OpenWorldHint
)

var hintNames = map[string]Hint{
	"readOnlyHint":    ReadOnlyHint,
	"destructiveHint": DestructiveHint,
	"idempotentHint":  IdempotentHint,
	"openWorldHint":   OpenWorldHint,
}

func (h Hint) String() string {
	for name, v := range hintNames {
		if v == h {
			return name
		}
	}
	return "unknownHint"
}

// Annotations are the hints a tool declared; nil fields were not declared.
// They are hints from the upstream, so rules on them should assume the
// worst when a hint is missing, which is what Effective does.
type Annotations struct {
	ReadOnly    *bool
	Destructive *bool
	Idempotent  *bool
	OpenWorld   *bool
}

// Effective returns the value of a hint after the specification's defaults:
// readOnlyHint false, destructiveHint true, idempotentHint false,
// openWorldHint true. destructiveHint only means something for a tool that
// is not read-only, so a read-only tool is never destructive. A nil
// receiver is a tool that declared nothing.
func (a *Annotations) Effective(h Hint) bool {
	var ro, de, id, ow *bool
	if a != nil {
		ro, de, id, ow = a.ReadOnly, a.Destructive, a.Idempotent, a.OpenWorld
	}
	switch h {
	case ReadOnlyHint:
		return deref(ro, false)
	case DestructiveHint:
		return !deref(ro, false) && deref(de, true)
	case IdempotentHint:
		return deref(id, false)
	case OpenWorldHint:
		return deref(ow, true)
	}
	return false
}

func deref(b *bool, def bool) bool {
	if b == nil {
		return def
	}
	return *b
}
