package config

import (
	"context"
	"errors"
	"slices"
	"strings"

	"github.com/amgateway/amg/internal/secrets"
)

// Template is a header or environment value as written in the config:
// literal text and ${REF} secret references. The text itself is
// configuration, not a secret (credentials go through references), so
// String shows it; what Expand returns is a Secret.
type Template struct {
	raw   string
	parts []part
	// pos is where the template is written, for CheckSecrets' problems.
	pos Pos
}

// part is literal text or, if ref.Scheme is set, a reference.
type part struct {
	lit string
	ref secrets.Ref
}

// ParseTemplate parses s: ${REF} is a secret reference (see
// secrets.ParseRef), $${ a literal ${, and anything else literal text.
func ParseTemplate(s string) (Template, error) {
	t, errs := parseTemplate(s)
	if len(errs) > 0 {
		return Template{}, errors.Join(errs...)
	}
	return t, nil
}

// parseTemplate returns every problem in s, not only the first.
func parseTemplate(s string) (Template, []error) {
	t := Template{raw: s}
	var errs []error
	var lit strings.Builder
	flush := func() {
		if lit.Len() > 0 {
			t.parts = append(t.parts, part{lit: lit.String()})
			lit.Reset()
		}
	}
	for i := 0; i < len(s); {
		switch {
		case strings.HasPrefix(s[i:], "$${"):
			lit.WriteString("${")
			i += 3
		case strings.HasPrefix(s[i:], "${"):
			end := strings.IndexByte(s[i+2:], '}')
			if end < 0 {
				errs = append(errs, errors.New(`unterminated "${" (close it with "}", or write "$${" for a literal "${")`))
				i = len(s)
				continue
			}
			ref, err := secrets.ParseRef(s[i+2 : i+2+end])
			if err != nil {
				errs = append(errs, err)
			} else {
				flush()
				t.parts = append(t.parts, part{ref: ref})
			}
			i += 2 + end + 1
		default:
			lit.WriteByte(s[i])
			i++
		}
	}
	flush()
	return t, errs
}

// String returns the template as written.
func (t Template) String() string { return t.raw }

// Refs returns the distinct references in t, in order of appearance.
func (t Template) Refs() []secrets.Ref {
	var refs []secrets.Ref
	for _, p := range t.parts {
		if p.ref.Scheme != "" && !slices.Contains(refs, p.ref) {
			refs = append(refs, p.ref)
		}
	}
	return refs
}

// Expand resolves each reference in t with src and returns the whole value
// as a Secret, also when t has no references, so that callers handle every
// header and environment value alike. src may be nil only if t has no
// references. An error is src's, which names the reference.
func (t Template) Expand(ctx context.Context, src secrets.Source) (secrets.Secret, error) {
	var b strings.Builder
	resolved := map[secrets.Ref]secrets.Secret{}
	for _, p := range t.parts {
		if p.ref.Scheme == "" {
			b.WriteString(p.lit)
			continue
		}
		s, ok := resolved[p.ref]
		if !ok {
			if src == nil {
				return secrets.Secret{}, errors.New(p.ref.String() + ": no secret source to resolve it")
			}
			var err error
			if s, err = src.Resolve(ctx, p.ref); err != nil {
				return secrets.Secret{}, err
			}
			resolved[p.ref] = s
		}
		b.WriteString(s.Reveal())
	}
	return secrets.New(b.String()), nil
}
