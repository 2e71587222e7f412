package config

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/amgateway/amg/internal/secrets"
)

func TestParseTemplate(t *testing.T) {
	for _, tc := range []struct {
		in      string
		parts   []part
		wantErr string
	}{
		{in: ""},
		{in: "ws_abc123", parts: []part{{lit: "ws_abc123"}}},
		{in: "Bearer ${env:TOKEN}", parts: []part{{lit: "Bearer "}, {ref: secrets.Ref{Scheme: "env", Path: "TOKEN"}}}},
		{in: "${env:A}${file:/run/b}", parts: []part{{ref: secrets.Ref{Scheme: "env", Path: "A"}}, {ref: secrets.Ref{Scheme: "file", Path: "/run/b"}}}},
		{in: "$${env:A} $5 ${vault:kv/x#y}$", parts: []part{{lit: "${env:A} $5 "}, {ref: secrets.Ref{Scheme: "vault", Path: "kv/x#y"}}, {lit: "$"}}},
		{in: "a } {", parts: []part{{lit: "a } {"}}},
		{in: "${env:A", wantErr: `unterminated "${" (close it with "}", or write "$${" for a literal "${")`},
		{in: "${x:1} and ${}", wantErr: `secret reference has unknown scheme "x" (expected env, file or vault)` + "\nempty secret reference"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseTemplate(tc.in)
			if tc.wantErr != "" {
				if err == nil || err.Error() != tc.wantErr {
					t.Fatalf("ParseTemplate(%q) error = %v, want:\n%s", tc.in, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.parts, got.parts, cmp.AllowUnexported(part{})); diff != "" {
				t.Errorf("parts (-want +got):\n%s", diff)
			}
			if got.String() != tc.in {
				t.Errorf("String() = %q, want %q", got.String(), tc.in)
			}
		})
	}
}

// FuzzParseTemplate checks that ParseTemplate never panics, and that a
// template it accepts is read faithfully: String gives it back as written,
// and writing its parts out again (a literal "${" as "$${") reads as the
// same parts.
func FuzzParseTemplate(f *testing.F) {
	for _, s := range []string{
		"", "ws_abc123", "Bearer ${env:TOKEN}", "${env:A}${file:/run/b}", "$${env:A} $5 ${vault:kv/x#y}$",
		"a } {", "${env:A", "${x:1} and ${}", "$$${env:A}", "$${", "${file:/a${b}", "${vault:kv/a#b}$${x}",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tp, err := ParseTemplate(s)
		if err != nil {
			return
		}
		if tp.String() != s {
			t.Fatalf("String() = %q, want %q", tp.String(), s)
		}
		var b strings.Builder
		for _, p := range tp.parts {
			if p.ref.Scheme == "" {
				b.WriteString(strings.ReplaceAll(p.lit, "${", "$${"))
			} else {
				b.WriteString("${" + p.ref.String() + "}")
			}
		}
		again, err := ParseTemplate(b.String())
		if err != nil {
			t.Fatalf("%q, written out again as %q: %v", s, b.String(), err)
		}
		if diff := cmp.Diff(tp.parts, again.parts, cmp.AllowUnexported(part{})); diff != "" {
			t.Fatalf("%q, written out again as %q, reads otherwise (-first +again):\n%s", s, b.String(), diff)
		}
	})
}

func TestTemplateExpand(t *testing.T) {
	tp, err := ParseTemplate("Bearer ${env:USER}:${env:PASS} (${env:USER}) $${literal}")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]secrets.Ref{{Scheme: "env", Path: "USER"}, {Scheme: "env", Path: "PASS"}}, tp.Refs()); diff != "" {
		t.Errorf("Refs() (-want +got):\n%s", diff)
	}
	src := newEnvSource(map[string]string{"USER": "amg", "PASS": planted})
	s, err := tp.Expand(context.Background(), src)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := s.Reveal(), "Bearer amg:"+planted+" (amg) ${literal}"; got != want {
		t.Errorf("Expand = %q, want %q", got, want)
	}
	if got := fmt.Sprint(s); got != "[redacted]" {
		t.Errorf("expanded value prints as %q", got)
	}
	if n := src.calls[secrets.Ref{Scheme: "env", Path: "USER"}]; n != 1 {
		t.Errorf("env:USER resolved %d times, want 1", n)
	}

	// No references: still a Secret, and no source needed.
	lit, err := ParseTemplate("ws_abc123")
	if err != nil {
		t.Fatal(err)
	}
	if s, err := lit.Expand(context.Background(), nil); err != nil || s.Reveal() != "ws_abc123" {
		t.Errorf("Expand literal = %q, %v", s.Reveal(), err)
	}
	if _, err := tp.Expand(context.Background(), nil); err == nil || err.Error() != "env:USER: no secret source to resolve it" {
		t.Errorf("Expand with nil source: %v", err)
	}

	// The source's error comes back as is, naming the reference.
	_, err = tp.Expand(context.Background(), newEnvSource(map[string]string{"USER": planted}))
	if err == nil || err.Error() != "env:PASS is not set" || !errors.Is(err, secrets.ErrNotFound) {
		t.Errorf("Expand with a missing secret: %v", err)
	}
	if err != nil && strings.Contains(err.Error(), planted) {
		t.Errorf("error reveals a resolved secret: %v", err)
	}
}
