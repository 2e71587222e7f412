package admin

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/amgateway/amg/internal/approval"
	"github.com/amgateway/amg/internal/audit"
)

// TokenPrefix starts every admin token, so that one pasted in the wrong
// place is recognisable (agent tokens start with amg_).
const TokenPrefix = "amgadm_"

// LoadOrCreateToken returns the admin token kept in the file at path,
// creating the file (mode 0600) with a new random token if it does not
// exist. Operators on the gateway's machine read it from there; the CLI
// does so by default.
//
// The file appears whole or not at all, and gateways starting together
// on one data directory all use the token the first of them created. A
// file that group or others may access is refused, as audit keys are:
// whoever reads the token approves calls and issues tokens of any role.
// So is one that holds anything but a token as LoadOrCreateToken makes
// them: TokenPrefix and 64 lowercase hex digits.
func LoadOrCreateToken(path string) (string, error) {
	tok, err := readToken(path)
	if !errors.Is(err, os.ErrNotExist) {
		return tok, err
	}
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("admin token: %w", err)
	}
	tok = TokenPrefix + hex.EncodeToString(b[:])
	err = createToken(path, tok)
	if errors.Is(err, os.ErrExist) {
		// Another gateway created it meanwhile: use that one.
		return readToken(path)
	}
	if err != nil {
		return "", err
	}
	return tok, nil
}

func readToken(path string) (string, error) {
	f, _, err := audit.OpenPrivate(path)
	if err != nil {
		return "", fmt.Errorf("admin token: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(f)
	if err != nil {
		return "", fmt.Errorf("read admin token: %w", err)
	}
	tok := strings.TrimSpace(string(data))
	digits, ok := strings.CutPrefix(tok, TokenPrefix)
	if !ok || len(digits) != 64 || strings.Trim(digits, "0123456789abcdef") != "" {
		return "", fmt.Errorf("admin token file %s does not hold an admin token", path)
	}
	return tok, nil
}

// createToken writes tok to a temporary file beside path, syncs it and
// links it to path. A link, unlike a rename, never replaces a token another
// gateway created meanwhile: it fails with an error matching os.ErrExist.
func createToken(path, tok string) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("create admin token: %w", err)
	}
	// Once linked, this removes only the temporary name.
	defer os.Remove(f.Name())
	_, err = f.WriteString(tok + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write admin token: %w", err)
	}
	if err := os.Link(f.Name(), path); err != nil {
		return fmt.Errorf("create admin token: %w", err)
	}
	// Best effort: the token is in place either way, and not every
	// system can sync a directory.
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// approvals serves the approval API, behind the admin token:
//
//	GET  /api/v1/approvals[?state=pending]
//	GET  /api/v1/approvals/{id}
//	POST /api/v1/approvals/{id}/approve   {"by": "alice", "reason": "..."}
//	POST /api/v1/approvals/{id}/deny      {"by": "alice", "reason": "..."}
//
// by and reason are refused or cut as approval.CleanDecision says; a
// decision's body over 64 KiB is refused with 413.
func approvals(mux *http.ServeMux, d Deps) {
	store, now := d.Approvals, d.Now
	if now == nil {
		now = time.Now
	}
	guard := func(h http.HandlerFunc) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if !ok || d.Token == "" || subtle.ConstantTimeCompare([]byte(got), []byte(d.Token)) != 1 {
				w.Header().Set("WWW-Authenticate", `Bearer realm="amg admin"`)
				writeError(w, http.StatusUnauthorized, "an admin token is required (Authorization: Bearer amgadm_...)")
				return
			}
			h(w, r)
		}
	}
	mux.HandleFunc("GET /api/v1/approvals", guard(func(w http.ResponseWriter, r *http.Request) {
		state := approval.State(r.URL.Query().Get("state"))
		if state != "" && !slices.Contains(approval.States, state) {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("unknown state %q: one of %s, or none for all", state, approval.StateList()))
			return
		}
		list, err := store.List(r.Context(), state)
		if err != nil {
			writeError(w, http.StatusServiceUnavailable, err.Error())
			return
		}
		if list == nil {
			list = []*approval.Approval{}
		}
		writeJSON(w, list)
	}))
	mux.HandleFunc("GET /api/v1/approvals/{id}", guard(func(w http.ResponseWriter, r *http.Request) {
		a, err := store.Get(r.Context(), r.PathValue("id"))
		if err != nil {
			writeStoreError(w, err)
			return
		}
		d := approvalDetail{Approval: a}
		if json.Valid(a.Body) {
			d.Request = a.Body
		}
		writeJSON(w, d)
	}))
	decide := func(to approval.State) http.HandlerFunc {
		return guard(func(w http.ResponseWriter, r *http.Request) {
			var req struct {
				By     string `json:"by"`
				Reason string `json:"reason"`
			}
			err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxDecisionBody)).Decode(&req)
			if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
				// Cut short, it would not decode: say why, not "must be JSON".
				writeError(w, http.StatusRequestEntityTooLarge, "body must be at most 64 KiB (a reason is cut to 500 bytes anyway)")
				return
			}
			if err != nil && !errors.Is(err, io.EOF) {
				writeError(w, http.StatusBadRequest, "body must be JSON: {\"by\": \"...\", \"reason\": \"...\"}")
				return
			}
			by, reason, err := approval.CleanDecision(req.By, req.Reason)
			if err != nil {
				writeError(w, http.StatusBadRequest, err.Error())
				return
			}
			a, err := store.Finish(r.Context(), r.PathValue("id"), to, by, reason, now())
			if err != nil {
				writeStoreError(w, err)
				return
			}
			writeJSON(w, a)
		})
	}
	mux.HandleFunc("POST /api/v1/approvals/{id}/approve", decide(approval.Approved))
	mux.HandleFunc("POST /api/v1/approvals/{id}/deny", decide(approval.Denied))
}

// maxDecisionBody bounds a decision's body, {"by": ..., "reason": ...},
// which CleanDecision cuts to far less.
const maxDecisionBody = 64 << 10

func writeStoreError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, approval.ErrNotFound):
		writeError(w, http.StatusNotFound, err.Error())
	case errors.Is(err, approval.ErrNotPending):
		writeError(w, http.StatusConflict, err.Error())
	default:
		writeError(w, http.StatusServiceUnavailable, err.Error())
	}
}

func writeError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"error": msg})
}

// approvalDetail is one approval as the API shows it: with the request the
// agent sent, which is what the approver judges (indented like the rest of
// the answer, to a bounded depth; body_sha256 is that of its exact bytes).
// Lists leave it out.
type approvalDetail struct {
	*approval.Approval
	Request json.RawMessage `json:"request,omitempty"`
}
