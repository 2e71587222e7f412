package tokens

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var format = regexp.MustCompile(`^amg_[0-9a-f]{64}$`)

func TestGenerate(t *testing.T) {
	seen := make(map[string]bool)
	ids := make(map[string]bool)
	for range 1000 {
		secret, d, err := Generate()
		if err != nil {
			t.Fatal(err)
		}
		if !format.MatchString(secret) {
			t.Fatalf("token %d characters long does not match %s", len(secret), format)
		}
		if seen[secret] {
			t.Fatal("Generate repeated a token")
		}
		seen[secret] = true
		if d != sha256.Sum256([]byte(secret)) {
			t.Fatal("digest is not the SHA-256 of the token")
		}
		parsed, err := Parse(secret)
		if err != nil || parsed != d {
			t.Fatalf("Parse did not round-trip: %v", err)
		}
		id := d.ID()
		if id != hex.EncodeToString(d[:8]) || !ValidID(id) {
			t.Fatalf("ID %q is not the first 16 hex digits of the digest", id)
		}
		if ids[id] {
			t.Fatal("Generate repeated an ID")
		}
		ids[id] = true
	}
}

func TestValidID(t *testing.T) {
	secret, d, _ := Generate()
	tests := []struct {
		id   string
		want bool
	}{
		{d.ID(), true},
		{"0123456789abcdef", true},
		{"", false},
		{"0123456789abcde", false},
		{"0123456789abcdef0", false},
		{"0123456789ABCDEF", false},
		{"0123456789abcdeg", false},
		{secret, false},
		{hex.EncodeToString(d[:]), false},
	}
	for _, tt := range tests {
		if got := ValidID(tt.id); got != tt.want {
			t.Errorf("ValidID(%q) = %v, want %v", tt.id, got, tt.want)
		}
	}
}

func TestCheckName(t *testing.T) {
	secret, _, _ := Generate()
	tests := []struct {
		name string
		ok   bool
	}{
		{"ci-bot", true},
		{"support.agent@example.com", true},
		{"notion_read", true},
		{"A", true},
		{strings.Repeat("x", 128), true},
		{"amg_admin", true},
		{"", false},
		{strings.Repeat("x", 129), false},
		{"has space", false},
		{"slash/role", false},
		{"tab\t", false},
		{"é", false},
		{"nul\x00", false},
		{secret, false},
	}
	for _, tt := range tests {
		if err := CheckName(tt.name); (err == nil) != tt.ok {
			t.Errorf("CheckName(%q) = %v, want ok %v", tt.name, err, tt.ok)
		}
	}
}

func TestIssue(t *testing.T) {
	ctx := context.Background()
	s := NewMemoryStore()
	now := time.Date(2026, 5, 1, 12, 0, 0, 123456789, time.UTC)

	secret, tok, err := Issue(ctx, s, "ci-bot", "notion_read", 24*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	d, err := Parse(secret)
	if err != nil {
		t.Fatal(err)
	}
	want := Token{
		ID: d.ID(), Agent: "ci-bot", Role: "notion_read",
		Created: time.Date(2026, 5, 1, 12, 0, 0, 123456000, time.UTC),
		Expires: time.Date(2026, 5, 2, 12, 0, 0, 123456000, time.UTC),
	}
	if diff := cmp.Diff(want, tok); diff != "" {
		t.Errorf("Issue (-want +got):\n%s", diff)
	}
	stored, err := s.Get(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(tok, stored); diff != "" {
		t.Errorf("stored token differs from the issued one (-issued +stored):\n%s", diff)
	}
	for _, text := range []string{fmt.Sprint(tok), fmt.Sprintf("%+v", tok), fmt.Sprintf("%#v", stored)} {
		if strings.Contains(text, secret) || strings.Contains(text, secret[len(Prefix):]) {
			t.Errorf("formatted token contains the secret: %s", text)
		}
	}

	_, forever, err := Issue(ctx, s, "ci-bot", "notion_read", 0, now)
	if err != nil {
		t.Fatal(err)
	}
	if !forever.Expires.IsZero() {
		t.Errorf("ttl 0: Expires = %v, want zero (never)", forever.Expires)
	}
}

func TestIssueRefuses(t *testing.T) {
	pasted, _, _ := Generate()
	tests := []struct {
		name        string
		agent, role string
		ttl         time.Duration
		want        string
	}{
		{"empty agent", "", "r", 0, "issue token: invalid agent name: names are 1 to 128 characters of A-Z a-z 0-9 _ . @ -"},
		{"bad role", "a", "no spaces", 0, "issue token: invalid role name: names are 1 to 128 characters of A-Z a-z 0-9 _ . @ -"},
		{"secret as agent", pasted, "r", 0, "issue token: invalid agent name: looks like a token secret, not a name"},
		{"negative ttl", "a", "r", -time.Second, "issue token: negative ttl -1s"},
		{"ttl just below zero", "a", "r", -time.Nanosecond, "issue token: negative ttl -1ns"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewMemoryStore()
			_, _, err := Issue(context.Background(), s, tt.agent, tt.role, tt.ttl, time.Now())
			if err == nil {
				t.Fatal("Issue succeeded")
			}
			if diff := cmp.Diff(tt.want, err.Error()); diff != "" {
				t.Errorf("error (-want +got):\n%s", diff)
			}
			if list, _ := s.List(context.Background()); len(list) != 0 {
				t.Errorf("refused Issue stored %v", list)
			}
		})
	}
}

func TestIssueStoreFailure(t *testing.T) {
	_, _, err := Issue(context.Background(), failingStore{}, "a", "r", 0, time.Now())
	if !errors.Is(err, errStoreDown) {
		t.Errorf("Issue = %v, want it to wrap the store error", err)
	}
}

func TestStatus(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		tok  Token
		want string
	}{
		{"no expiry", Token{}, "active"},
		{"expires later", Token{Expires: now.Add(time.Nanosecond)}, "active"},
		{"expires now", Token{Expires: now}, "expired"},
		{"expired", Token{Expires: now.Add(-time.Hour)}, "expired"},
		{"revoked", Token{Revoked: now.Add(-time.Hour)}, "revoked"},
		{"revoked in the future", Token{Revoked: now.Add(time.Hour)}, "revoked"},
		{"revoked and expired", Token{Expires: now.Add(-time.Hour), Revoked: now.Add(-time.Minute)}, "revoked"},
	}
	for _, tt := range tests {
		if got := tt.tok.Status(now); got != tt.want {
			t.Errorf("%s: Status = %q, want %q", tt.name, got, tt.want)
		}
	}
}
