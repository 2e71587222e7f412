// Package tokens issues, stores and checks the bearer tokens agents present
// to AMG. An agent's role comes only from its token, resolved here.
//
// A token is "amg_" followed by 64 lowercase hexadecimal digits: 256 bits
// from crypto/rand. Hex rather than base62 because a fixed length and a
// 16-letter alphabet make the format trivial to check strictly, and the
// extra 21 characters cost nothing in an Authorization header. The secret
// is shown once, at issuance; stores keep only its SHA-256 digest, so a
// leaked database cannot be replayed against the gateway.
//
// Nothing in this package puts a secret in an error, a log line or a String
// method: only Generate and Issue ever return one.
package tokens

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"
)

// Prefix starts every token, so that secret scanners and humans can tell
// an AMG token from other credentials.
const Prefix = "amg_"

const (
	secretBytes = 32
	// secretLen is the exact length of a token: prefix and hex digits.
	secretLen = len(Prefix) + 2*secretBytes
	// idLen is the length of a public token ID: 8 digest bytes in hex.
	// 64 bits keeps accidental collisions out of reach for any number of
	// tokens an installation will issue, and stores refuse one anyway.
	idLen = 16
)

// Errors from Parse, Authenticate and the stores. Callers branch on them to
// pick a deny reason; none of them carries the token that was presented.
var (
	// ErrMalformed means the string is not an AMG token: wrong prefix,
	// length or alphabet.
	ErrMalformed = errors.New("malformed token")
	// ErrUnknown means a well-formed token (or an ID) that the store does
	// not hold.
	ErrUnknown = errors.New("unknown token")
	// ErrExpired means the token's expiry time has passed.
	ErrExpired = errors.New("token expired")
	// ErrRevoked means the token was revoked.
	ErrRevoked = errors.New("token revoked")
)

// Digest is the SHA-256 of a whole token string, prefix included. It is
// what stores keep and look tokens up by.
type Digest [sha256.Size]byte

// ID returns the token's public ID: the first 16 hex digits of the digest.
// It names the token in listings, audit records and revocation; it cannot
// be used to authenticate.
func (d Digest) ID() string { return hex.EncodeToString(d[:idLen/2]) }

// Token is what a store knows about an issued token. It holds no secret.
type Token struct {
	ID      string
	Agent   string
	Role    string
	Created time.Time
	// Expires is when the token stops working; zero means never.
	Expires time.Time
	// Revoked is when the token was revoked; zero means it was not.
	Revoked time.Time
}

// Status is "revoked", "expired" or "active" at now. Revocation wins over
// expiry because it is the operator's explicit decision.
func (t Token) Status(now time.Time) string {
	switch t.check(now) {
	case ErrRevoked:
		return "revoked"
	case ErrExpired:
		return "expired"
	}
	return "active"
}

// Live reports which of the tokens of public IDs ids may be used at now:
// stored, and neither revoked nor expired. Only those are in the map. An
// error means s could not be asked.
func Live(ctx context.Context, s Store, ids []string, now time.Time) (map[string]bool, error) {
	found, err := s.Find(ctx, ids)
	if err != nil {
		return nil, err
	}
	live := make(map[string]bool, len(found))
	for id, t := range found {
		if t.check(now) == nil {
			live[id] = true
		}
	}
	return live, nil
}

// check reports whether t may be used at now. A revocation time in the
// future still counts: revocation is never scheduled, so such a time only
// means clocks disagree, and failing closed is right.
func (t Token) check(now time.Time) error {
	if !t.Revoked.IsZero() {
		return ErrRevoked
	}
	if !t.Expires.IsZero() && !now.Before(t.Expires) {
		return ErrExpired
	}
	return nil
}

// Generate returns a new random token and its digest.
func Generate() (secret string, d Digest, err error) {
	var raw [secretBytes]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", Digest{}, fmt.Errorf("generate token: %w", err)
	}
	var buf [secretLen]byte
	copy(buf[:], Prefix)
	hex.Encode(buf[len(Prefix):], raw[:])
	return string(buf[:]), sha256.Sum256(buf[:]), nil
}

// Parse checks that secret is exactly an AMG token and returns its digest.
// Anything else, including surrounding whitespace or an "Bearer " prefix,
// is ErrMalformed: the caller strips the scheme, and nothing is trimmed
// here, so what was authenticated is exactly what was sent.
func Parse(secret string) (Digest, error) {
	if len(secret) != secretLen || secret[:len(Prefix)] != Prefix {
		return Digest{}, ErrMalformed
	}
	var buf [secretLen]byte
	copy(buf[:], secret)
	for _, c := range buf[len(Prefix):] {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return Digest{}, ErrMalformed
		}
	}
	// Hashing from a fixed-size array keeps the per-request path free of
	// allocations. No constant-time comparison is needed anywhere: lookups
	// are by digest, and an attacker cannot steer a digest's bytes.
	return sha256.Sum256(buf[:]), nil
}

// parseID decodes a public token ID. ok is false for anything that is not
// exactly 16 lowercase hex digits.
func parseID(id string) (b [idLen / 2]byte, ok bool) {
	if len(id) != idLen {
		return b, false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return b, false
		}
	}
	_, err := hex.Decode(b[:], []byte(id))
	return b, err == nil
}

// ValidID reports whether id has the form of a public token ID.
func ValidID(id string) bool {
	_, ok := parseID(id)
	return ok
}

// CheckName reports whether s may be an agent or role name: 1 to 128
// characters of A-Z a-z 0-9 _ . @ -. A name that is itself a token is
// refused, so a secret pasted into the wrong flag is never stored in clear.
func CheckName(s string) error {
	if len(s) == 0 || len(s) > 128 {
		return errBadName
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '_' || c == '.' || c == '@' || c == '-') {
			return errBadName
		}
	}
	if _, err := Parse(s); err == nil {
		return errors.New("looks like a token secret, not a name")
	}
	return nil
}

var errBadName = errors.New("names are 1 to 128 characters of A-Z a-z 0-9 _ . @ -")

// Issue creates a token for agent with role, valid for ttl from now (0: no
// expiry), and stores its digest in s. The secret is returned only here;
// it cannot be recovered later.
func Issue(ctx context.Context, s Store, agent, role string, ttl time.Duration, now time.Time) (secret string, t Token, err error) {
	if err := CheckName(agent); err != nil {
		return "", Token{}, fmt.Errorf("issue token: invalid agent name: %w", err)
	}
	if err := CheckName(role); err != nil {
		return "", Token{}, fmt.Errorf("issue token: invalid role name: %w", err)
	}
	if ttl < 0 {
		return "", Token{}, fmt.Errorf("issue token: negative ttl %v", ttl)
	}
	secret, d, err := Generate()
	if err != nil {
		return "", Token{}, err
	}
	t = Token{ID: d.ID(), Agent: agent, Role: role, Created: storedTime(now)}
	if ttl > 0 {
		t.Expires = storedTime(now.Add(ttl))
	}
	if err := s.Put(ctx, d, t); err != nil {
		return "", Token{}, fmt.Errorf("issue token: %w", err)
	}
	return secret, t, nil
}

// storedTime is t as every store returns it: microsecond precision (what
// SQLite keeps as an integer without overflowing for any plausible date),
// UTC, no monotonic reading. Both stores apply it so that they behave
// identically under the contract test.
func storedTime(t time.Time) time.Time {
	if t.IsZero() {
		return time.Time{}
	}
	return time.UnixMicro(t.UnixMicro()).UTC()
}
