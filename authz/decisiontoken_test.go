package authz

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strconv"
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
	// A session id is the agent's to choose: one with the field separator
	// stays one field.
	d := Decision{ID: "d1", Agent: "bot-1", Role: "reader", PolicyVersion: "3-abc", Verdict: "allow", BodySHA256: sha256.Sum256(body),
		Method: "POST", Session: "s-1|v3|x"}
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
	// The token ID and an approval timeout are bound like every other
	// field.
	now = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	parked := d
	parked.Verdict, parked.TokenID, parked.ApprovalTimeout, parked.Expires = "needs_approval", "0123456789abcdef", 5*time.Minute, time.Time{}
	tok2 := s.Sign(parked)
	got, err = s.Verify(tok2, body)
	parked.Expires = now.Add(10 * time.Second)
	if err != nil || got != parked {
		t.Errorf("verified %+v, %v; want %+v", got, err, parked)
	}
	enc2, sig2, _ := strings.Cut(tok2, ".")
	if _, err := s.Verify(enc2[:len(enc2)-2]+"AA."+sig2, body); !errors.Is(err, ErrDecisionSignature) {
		t.Errorf("a changed payload: %v", err)
	}

	// A v1 token, from a replica not yet upgraded, verifies, without a
	// token ID; payloads of a version with the other's fields do not.
	signed := func(payload string) string {
		enc := base64.RawURLEncoding.EncodeToString([]byte(payload))
		mac := s.mac([]byte(enc))
		return enc + "." + base64.RawURLEncoding.EncodeToString(mac[:])
	}
	sum := sha256.Sum256(body)
	fields := "|d1|bot-1|reader|3-abc|allow|" + hex.EncodeToString(sum[:]) + "|" + strconv.FormatInt(now.Add(time.Second).UnixMilli(), 10)
	if got, err := s.Verify(signed("v1"+fields), body); err != nil || got.ID != "d1" || got.TokenID != "" || got.ApprovalTimeout != 0 {
		t.Errorf("a v1 token = %+v, %v", got, err)
	}
	for _, payload := range []string{"v1" + fields + "|0123456789abcdef|0", "v2" + fields, "v2" + fields + "|0123456789abcdef",
		"v2" + fields + "|0123456789abcdef|-1", "v2" + fields + "|0123456789abcdef|x"} {
		if _, err := s.Verify(signed(payload), body); !errors.Is(err, ErrDecisionMalformed) {
			t.Errorf("payload %q: %v, want ErrDecisionMalformed", payload, err)
		}
	}
	if got, err := s.Verify(signed("v2"+fields+"|0123456789abcdef|0"), body); err != nil || got.Method != "" || got.Session != "" {
		t.Errorf("the well-formed v2 payload of the cases above: %+v, %v; want it verified, binding no method", got, err)
	}
	// v3 binds the method, never empty, and the session id, in base64url.
	for _, payload := range []string{"v3" + fields + "|0123456789abcdef|0", "v3" + fields + "|0123456789abcdef|0||",
		"v3" + fields + "|0123456789abcdef|0|POST|!!", "v3" + fields + "|0123456789abcdef|0|POST"} {
		if _, err := s.Verify(signed(payload), body); !errors.Is(err, ErrDecisionMalformed) {
			t.Errorf("payload %q: %v, want ErrDecisionMalformed", payload, err)
		}
	}
	if got, err := s.Verify(signed("v3"+fields+"|0123456789abcdef|0|GET|"), body); err != nil || got.Method != "GET" || got.Session != "" {
		t.Errorf("a v3 token without a session: %+v, %v", got, err)
	}

	if _, err := NewSigner(key[:31], nil); err == nil {
		t.Error("a 31-byte key was accepted")
	}
}
