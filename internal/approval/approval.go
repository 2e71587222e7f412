// Package approval keeps the calls parked for a human: each approval holds
// the exact request an agent sent, and moves once from pending to
// approved, denied, expired or cancelled; an approved one is then either
// executed, at most once, or voided. The broker parks and waits; operators
// decide through the admin API or the CLI.
package approval

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// State is where an approval is in its life.
type State string

const (
	Pending   State = "pending"
	Approved  State = "approved"
	Denied    State = "denied"
	Expired   State = "expired"
	Cancelled State = "cancelled" // the agent went away before a decision
	Executed  State = "executed"  // approved, and sent upstream
	Voided    State = "voided"    // approved, and not run: see Approval.VoidReason
)

// States are the states an approval can be in, in the order of its life.
var States = []State{Pending, Approved, Denied, Expired, Cancelled, Executed, Voided}

// StateList is States as a list for people to read: "pending, approved, …".
func StateList() string {
	names := make([]string, len(States))
	for i, s := range States {
		names[i] = string(s)
	}
	return strings.Join(names, ", ")
}

// Final reports whether the approval can no longer be decided.
func (s State) Final() bool { return s != Pending }

// Limits on a human decision: who decides and why reach the audit log,
// the agent's error and operators' terminals.
const (
	maxBy     = 64  // bytes
	maxReason = 500 // bytes; a longer reason is cut
)

// CleanDecision returns who decides and why, as an operator gave them, in
// the form a decision records them: trimmed, and the reason cut to 500
// bytes without splitting a character. It refuses a by that is blank or
// over 64 bytes, and either one holding control characters (which could
// forge a line in a log or move a terminal's cursor) or bytes that are not
// UTF-8. The error names the rule each one breaks, for whoever typed them.
func CleanDecision(by, reason string) (string, string, error) {
	by, reason = strings.TrimSpace(by), strings.TrimSpace(reason)
	var errs []error
	switch {
	case by == "":
		errs = append(errs, errors.New(`"by" must name who decides; the audit log records it`))
	case len(by) > maxBy:
		errs = append(errs, fmt.Errorf(`"by" must be at most %d bytes`, maxBy))
	default:
		errs = append(errs, checkText("by", by))
	}
	errs = append(errs, checkText("reason", reason))
	if err := errors.Join(errs...); err != nil {
		return "", "", err
	}
	if len(reason) > maxReason {
		n := maxReason
		for !utf8.RuneStart(reason[n]) {
			n--
		}
		reason = reason[:n]
	}
	return by, reason, nil
}

// checkText refuses s, the field named field, unless it is UTF-8 without
// control characters.
func checkText(field, s string) error {
	switch {
	case !utf8.ValidString(s):
		return fmt.Errorf("%q must be UTF-8 text", field)
	case strings.ContainsFunc(s, unicode.IsControl):
		return fmt.Errorf("%q must not contain control characters (newlines, escapes)", field)
	}
	return nil
}

// Approval is one parked call.
type Approval struct {
	ID         string    `json:"id"`
	DecisionID string    `json:"decision_id"`
	Agent      string    `json:"agent"`
	Role       string    `json:"role"`
	Server     string    `json:"server"`
	Tool       string    `json:"tool"`
	Body       []byte    `json:"-"`                     // the exact request bytes, while the call may run (see Store.Finish)
	BodySHA256 string    `json:"body_sha256,omitempty"` // empty only where left out, as from the webhook's payload
	Created    time.Time `json:"created"`
	Expires    time.Time `json:"expires"`
	State      State     `json:"state"`
	DecidedBy  string    `json:"decided_by,omitempty"`
	Reason     string    `json:"reason,omitempty"`
	DecidedAt  time.Time `json:"decided_at,omitzero"`
	// VoidReason says why an approved call was not run (state Voided):
	// what allowed it no longer did, its stored request had been altered,
	// or its agent had gone.
	VoidReason string `json:"void_reason,omitempty"`
}

// An approval id is idPrefix and idBytes random bytes in lowercase hex.
const (
	idPrefix = "apr_"
	idBytes  = 12
)

// New returns a pending approval of body, valid for ttl from now.
func New(decisionID, agent, role, server, tool string, body []byte, now time.Time, ttl time.Duration) (*Approval, error) {
	var b [idBytes]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, fmt.Errorf("approval id: %w", err)
	}
	sum := sha256.Sum256(body)
	return &Approval{ID: idPrefix + hex.EncodeToString(b[:]), DecisionID: decisionID, Agent: agent, Role: role,
		Server: server, Tool: tool, Body: append([]byte(nil), body...), BodySHA256: hex.EncodeToString(sum[:]),
		Created: now.UTC(), Expires: now.Add(ttl).UTC(), State: Pending}, nil
}

// ValidID reports whether id has the form of an approval id, as New makes
// them.
func ValidID(id string) bool {
	h, ok := strings.CutPrefix(id, idPrefix)
	if !ok || len(h) != 2*idBytes {
		return false
	}
	for i := range len(h) {
		if c := h[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// Errors of Store methods; callers branch on them.
var (
	ErrNotFound = errors.New("no such approval")
	// ErrNotPending: the approval was already decided, expired or
	// cancelled, and cannot be decided again.
	ErrNotPending = errors.New("approval is no longer pending")
	// ErrExpired: a decision came at or after the approval's expiry,
	// too late to stand (the agent was told when it would expire). It is
	// an ErrNotPending.
	ErrExpired = fmt.Errorf("%w: it expired before the decision", ErrNotPending)
	// ErrNotApproved: only an approved approval can be executed, once, or
	// voided.
	ErrNotApproved = errors.New("approval is not approved, or was already executed or voided")
	// ErrAltered: the request the store holds is not the one parked, so it
	// is not what the agent sent, and perhaps not what was approved.
	ErrAltered = errors.New("the stored request is not the one parked")
)

// How long stores keep approvals, unless their options say otherwise.
const (
	// DefaultRetention is how long a decided approval stays readable: long
	// enough to look back over a week of decisions.
	DefaultRetention = 7 * 24 * time.Hour
	// DefaultPendingGrace is how long past its Expires a pending approval
	// is kept. The broker expires approvals itself; the grace only matters
	// when nothing was left to do it, and keeps such an orphan visible for
	// a while before the store forgets it.
	DefaultPendingGrace = time.Hour
)

// Store keeps approvals. Implementations are safe for concurrent use, and
// every transition is atomic: of two replicas deciding the same approval,
// one wins and the other gets ErrNotPending.
type Store interface {
	// Create stores a new pending approval.
	Create(ctx context.Context, a *Approval) error
	// Get returns the approval with id, or ErrNotFound.
	Get(ctx context.Context, id string) (*Approval, error)
	// List returns the approvals in state (every state if empty), oldest
	// first.
	List(ctx context.Context, state State) ([]*Approval, error)
	// CountPending returns how many approvals List(ctx, Pending) would
	// return, without reading them: a metrics scrape, which needs no
	// token, asks for it.
	CountPending(ctx context.Context) (int64, error)
	// Recent returns the n approvals decided last (in any state but
	// pending), the latest decision first. Its cost follows n, not how
	// many approvals the store keeps.
	Recent(ctx context.Context, n int) ([]*Approval, error)
	// Finish moves a pending approval to to (Approved, Denied, Expired or
	// Cancelled), recording who and why, and wakes its waiters. Moved to
	// anything but Approved, the approval drops its Body (BodySHA256
	// stays): requests no one will run do not fill the store for its
	// retention. Approved or Denied at or after the approval's Expires is
	// ErrExpired, and changes nothing.
	Finish(ctx context.Context, id string, to State, by, reason string, at time.Time) (*Approval, error)
	// Execute moves an approved approval to Executed if the request it
	// holds is body, byte for byte: the caller may then send body
	// upstream, exactly once. Another request is ErrAltered, and changes
	// nothing.
	Execute(ctx context.Context, id string, body []byte) (*Approval, error)
	// Void moves an approved approval to Voided, recording why it will
	// not run, and drops its Body as Finish does. It is the end of an
	// approval that Execute will not take.
	Void(ctx context.Context, id, reason string) (*Approval, error)
	// Wait returns when the approval is no longer pending (with it), or
	// when ctx ends.
	Wait(ctx context.Context, id string) (*Approval, error)
}
