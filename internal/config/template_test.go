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
