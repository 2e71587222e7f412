package authz

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"
)

// HeaderDecision carries the signed decision from authz to the broker.
const HeaderDecision = "x-amg-decision"

// DefaultDecisionTTL is how long a decision token is valid: long enough
// for Envoy to forward the request, short enough that a captured token is
// useless soon after.
const DefaultDecisionTTL = 30 * time.Second

// Token versions: v2 adds the token ID and the approval timeout in
// milliseconds (0: none) to v1's fields; v3, which Sign makes, adds the
// request's HTTP method and its session id (base64url, so that no
// character of it separates fields). v1 and v2 tokens, of replicas not yet
// upgraded, still verify, binding neither.
const (
	tokenVersion1 = "v1"
	tokenVersion2 = "v2"
	tokenVersion  = "v3"
)

// Decision is what a decision token binds: the broker forwards a request
// only if its body hashes to BodySHA256 and the token is fresh.
type Decision struct {
	ID            string
	Agent         string
	Role          string
	PolicyVersion string
	Verdict       string
	BodySHA256    [32]byte
	Expires       time.Time
	// TokenID is the public ID of the agent's AMG token: the broker ends
	// a session once every token used in it is revoked or expired.
	TokenID string
	// ApprovalTimeout is how long a call that needs approval may wait for
	// a human, when the rule that parks it says; 0 leaves it to the broker.
	ApprovalTimeout time.Duration
	// Method and Session are the request's HTTP method and Mcp-Session-Id
	// ("" without one): the broker serves the decision to that request
	// only. Method is "" in a token older than v3.
	Method, Session string
}

// Errors from Signer.Verify. The broker refuses the request on any of them.
var (
	ErrDecisionMissing   = errors.New("no decision token")
	ErrDecisionMalformed = errors.New("malformed decision token")
	ErrDecisionSignature = errors.New("decision token signature does not verify")
	ErrDecisionExpired   = errors.New("decision token expired")
	ErrDecisionBody      = errors.New("request body is not the body that was decided on")
)

// Signer signs and verifies decision tokens with a key shared by every
// authz and broker replica.
type Signer struct {
	macs sync.Pool // of *macState
	key  []byte
	ttl  time.Duration
	now  func() time.Time
}

// SignerOptions tune a Signer; nil means defaults.
type SignerOptions struct {
	// TTL is the token lifetime; 0 means DefaultDecisionTTL.
	TTL time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// NewSigner returns a Signer for key, which must be at least 32 bytes.
func NewSigner(key []byte, opts *SignerOptions) (*Signer, error) {
	if len(key) < 32 {
		return nil, fmt.Errorf("decision key must be at least 32 bytes, got %d", len(key))
	}
	s := &Signer{key: append([]byte(nil), key...), ttl: DefaultDecisionTTL, now: time.Now}
	s.macs.New = func() any { return &macState{h: hmac.New(sha256.New, s.key)} }
	if opts != nil {
		if opts.TTL > 0 {
			s.ttl = opts.TTL
		}
		if opts.Now != nil {
			s.now = opts.Now
		}
	}
	return s, nil
}

// Sign returns the token for d, valid from now for the signer's TTL.
// Agent, role and policy version never contain '|' (their character sets
// exclude it), which keeps the payload a plain field list.
func (s *Signer) Sign(d Decision) string {
	exp := s.now().Add(s.ttl).UnixMilli()
	var buf [256]byte
	p := append(buf[:0], tokenVersion+"|"...)
	for _, f := range [...]string{d.ID, d.Agent, d.Role, d.PolicyVersion, d.Verdict} {
		p = append(append(p, f...), '|')
	}
	p = hex.AppendEncode(p, d.BodySHA256[:])
	p = strconv.AppendInt(append(p, '|'), exp, 10)
	p = append(append(append(p, '|'), d.TokenID...), '|')
	p = strconv.AppendInt(p, max(d.ApprovalTimeout.Milliseconds(), 0), 10)
	p = append(append(append(p, '|'), d.Method...), '|')
	p = base64.RawURLEncoding.AppendEncode(p, []byte(d.Session))
	// The token is written once, at its final size, and never changed
	// after: it becomes the returned string without a copy.
	enc := base64.RawURLEncoding
	n := enc.EncodedLen(len(p))
	tok := make([]byte, n, n+1+enc.EncodedLen(sha256.Size))
	enc.Encode(tok, p)
	mac := s.mac(tok)
	tok = enc.AppendEncode(append(tok, '.'), mac[:])
	return unsafe.String(unsafe.SliceData(tok), len(tok))
}

// mac is the HMAC of an encoded payload. HMAC states are pooled: hmac.New
// hashes the key every time, which a per-request signer need not repeat.
func (s *Signer) mac(enc []byte) [sha256.Size]byte {
	m := s.macs.Get().(*macState)
	m.h.Reset()
	m.h.Write(enc)
	m.h.Sum(m.sum[:0])
	out := m.sum
	s.macs.Put(m)
	return out
}

// macState is a pooled HMAC with room for its sum: a sum taken into a
// local array through the hash.Hash interface would escape to the heap.
type macState struct {
	h   hash.Hash
	sum [sha256.Size]byte
}

// Verify checks a token's signature, freshness and binding to body.
func (s *Signer) Verify(token string, body []byte) (Decision, error) {
	if token == "" {
		return Decision{}, ErrDecisionMissing
	}
	enc, sig, ok := strings.Cut(token, ".")
	if !ok {
		return Decision{}, ErrDecisionMalformed
	}
	got, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil {
		return Decision{}, ErrDecisionMalformed
	}
	want := s.mac([]byte(enc))
	if !hmac.Equal(got, want[:]) {
		return Decision{}, ErrDecisionSignature
	}
	raw, err := base64.RawURLEncoding.DecodeString(enc)
	if err != nil {
		return Decision{}, ErrDecisionMalformed
	}
	f := strings.Split(string(raw), "|")
	if !(len(f) == 8 && f[0] == tokenVersion1 || len(f) == 10 && f[0] == tokenVersion2 || len(f) == 12 && f[0] == tokenVersion) {
		return Decision{}, ErrDecisionMalformed
	}
	d := Decision{ID: f[1], Agent: f[2], Role: f[3], PolicyVersion: f[4], Verdict: f[5]}
	if len(f) == 12 {
		session, err := base64.RawURLEncoding.DecodeString(f[11])
		if err != nil || f[10] == "" {
			return Decision{}, ErrDecisionMalformed
		}
		d.Method, d.Session = f[10], string(session)
	}
	if len(f) >= 10 {
		ms, err := strconv.ParseInt(f[9], 10, 64)
		if err != nil || ms < 0 {
			return Decision{}, ErrDecisionMalformed
		}
		d.TokenID, d.ApprovalTimeout = f[8], time.Duration(ms)*time.Millisecond
	}
	if n, err := hex.Decode(d.BodySHA256[:], []byte(f[6])); err != nil || n != 32 {
		return Decision{}, ErrDecisionMalformed
	}
	ms, err := strconv.ParseInt(f[7], 10, 64)
	if err != nil {
		return Decision{}, ErrDecisionMalformed
	}
	d.Expires = time.UnixMilli(ms).UTC()
	if !s.now().Before(d.Expires) {
		return Decision{}, ErrDecisionExpired
	}
	if sha256.Sum256(body) != d.BodySHA256 {
		return Decision{}, ErrDecisionBody
	}
	return d, nil
}
