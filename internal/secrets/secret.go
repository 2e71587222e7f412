// Package secrets keeps upstream credentials out of everything but the
// upstream request: a Secret prints as [redacted] however it is formatted,
// logged or marshalled, and a Source turns a reference written in the
// config (env:NAME, file:PATH, vault:PATH#FIELD) into a Secret when an
// upstream connection is made.
package secrets

import (
	"fmt"
	"log/slog"
)

// Redacted is what a Secret prints as.
const Redacted = "[redacted]"

// Secret is a credential. Every way Go has of turning it into text prints
// Redacted; only Reveal returns the value.
//
// The value sits behind a pointer so that even a Secret in an unexported
// struct field, which fmt prints by reflection without calling methods,
// shows an address rather than the value. For the same reason == compares
// identity, not value: compare Reveal results where equality matters.
// The zero Secret is empty.
type Secret struct {
	p *string
}

// New wraps v.
func New(v string) Secret { return Secret{p: &v} }

// Reveal returns the value. Call it only at the moment the value is written
// into an upstream request (a header, a process environment), never to
// build a message, log line, audit record or error.
func (s Secret) Reveal() string {
	if s.p == nil {
		return ""
	}
	return *s.p
}

// String returns Redacted.
func (s Secret) String() string { return Redacted }

// GoString returns Redacted, so %#v does not show the value.
func (s Secret) GoString() string { return Redacted }

// Format prints Redacted for every verb (quoted for %q), so that %x and
// friends do not bypass String.
func (s Secret) Format(f fmt.State, verb rune) {
	if verb == 'q' {
		fmt.Fprintf(f, "%q", Redacted)
		return
	}
	_, _ = f.Write([]byte(Redacted))
}

// LogValue makes slog record Redacted.
func (s Secret) LogValue() slog.Value { return slog.StringValue(Redacted) }

// MarshalJSON encodes Redacted as a JSON string.
func (s Secret) MarshalJSON() ([]byte, error) { return []byte(`"` + Redacted + `"`), nil }

// MarshalText returns Redacted; it also covers map keys and encoders other
// than JSON.
func (s Secret) MarshalText() ([]byte, error) { return []byte(Redacted), nil }

var (
	_ fmt.Stringer   = Secret{}
	_ fmt.GoStringer = Secret{}
	_ fmt.Formatter  = Secret{}
	_ slog.LogValuer = Secret{}
)
