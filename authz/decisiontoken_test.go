package authz

import (
	"crypto/sha256"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestDecisionToken(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	key := []byte(strings.Repeat("k", 32))
	s, err := NewSigner(key, &SignerOptions{Now: clock, TTL: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	other, _ := NewSigner([]byte(strings.Repeat("o", 32)), &SignerOptions{Now: clock})
	body := []byte(`{"jsonrpc":"2.0","id":1,"method":"tools/call"}`)
	d := Decision{ID: "d1", Agent: "bot-1", Role: "reader", PolicyVersion: "3-abc", Verdict: "allow", BodySHA256: sha256.Sum256(body)}
	tok := s.Sign(d)

	got, err := s.Verify(tok, body)
	if err != nil {
		t.Fatal(err)
	}
	d.Expires = now.Add(10 * time.Second)
	if got != d {
		t.Errorf("verified %+v, want %+v", got, d)
	}

	enc, sig, _ := strings.Cut(tok, ".")
	tests := []struct {
		name  string
		token string
		body  []byte
		at    time.Time
		want  error
	}{
		{"missing", "", body, now, ErrDecisionMissing},
		{"no signature", enc, body, now, ErrDecisionMalformed},
		{"signature not base64", enc + ".!!", body, now, ErrDecisionMalformed},
		{"payload changed", enc[:len(enc)-2] + "AA." + sig, body, now, ErrDecisionSignature},
		{"signed with another key", other.Sign(d), body, now, ErrDecisionSignature},
		{"other body", tok, []byte(`{}`), now, ErrDecisionBody},
		{"expired", tok, body, now.Add(10 * time.Second), ErrDecisionExpired},
		{"almost expired", tok, body, now.Add(10*time.Second - time.Millisecond), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now = tt.at
			defer func() { now = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC) }()
			if _, err := s.Verify(tt.token, tt.body); !errors.Is(err, tt.want) {
				t.Errorf("err = %v, want %v", err, tt.want)
			}
		})
	}
	if _, err := NewSigner(key[:31], nil); err == nil {
		t.Error("a 31-byte key was accepted")
	}
}
