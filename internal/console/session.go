package console

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"

	"github.com/amgateway/amg/internal/approval"
	"github.com/amgateway/amg/internal/tokens"
)

// cookieName is the session cookie; sessions last sessionTTL.
const (
	cookieName = "amg_console"
	sessionTTL = 12 * time.Hour
)

// session is a signed-in operator. The cookie holds it signed with a key
// derived from the admin token, so a session is valid on every replica
// that shares the token, and replacing the token ends every session.
// A session works only while its nonce is on the list of live sessions
// (Deps.Sessions), from sign-in until sign-out or expiry: signing out
// takes it off, and a list that lost its data ends every session.
type session struct {
	// Name is who signed in, as they gave it; decisions are recorded as
	// theirs.
	Name    string `json:"n"`
	Expires int64  `json:"e"`
	// Nonce makes each session's CSRF token its own, and names the
	// session on the list of live sessions.
	Nonce string `json:"c"`
}

func sessionKey(adminToken string) []byte {
	m := hmac.New(sha256.New, []byte(adminToken))
	m.Write([]byte("amg console session v1"))
	return m.Sum(nil)
}

func (c *Console) mac(parts ...string) []byte {
	m := hmac.New(sha256.New, c.key)
	for _, p := range parts {
		m.Write([]byte(p))
		m.Write([]byte{0})
	}
	return m.Sum(nil)
}

// cookie encodes s as a cookie value: payload "." signature.
func (c *Console) cookie(s *session) string {
	payload, _ := json.Marshal(s)
	p := base64.RawURLEncoding.EncodeToString(payload)
	return p + "." + base64.RawURLEncoding.EncodeToString(c.mac("session", p))
}

// session returns the request's valid session, or nil.
func (c *Console) session(r *http.Request) *session {
	if c.d.Token == "" {
		// New refuses this; the key of an empty token is public.
		return nil
	}
	ck, err := r.Cookie(cookieName)
	if err != nil {
		return nil
	}
	p, sig, ok := strings.Cut(ck.Value, ".")
	if !ok {
		return nil
	}
	got, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil || !hmac.Equal(got, c.mac("session", p)) {
		return nil
	}
	payload, err := base64.RawURLEncoding.DecodeString(p)
	if err != nil {
		return nil
	}
	var s session
	if json.Unmarshal(payload, &s) != nil || c.opts.Now().Unix() >= s.Expires || s.Nonce == "" {
		return nil
	}
	// A cookie signed before the rule for names grew stricter must not
	// decide under a name the rule refuses.
	if by, err := cleanName(s.Name); err != nil || by != s.Name {
		return nil
	}
	return &s
}

// csrf is the token every state change of s must carry.
func (c *Console) csrf(s *session) string {
	return hex.EncodeToString(c.mac("csrf", s.Nonce))
}

// signedIn runs h for requests with a valid session, and for a state
// change only with the session's CSRF token (form field csrf, or header
// X-CSRF-Token). Without a session a page redirects to sign-in and
// anything else gets 401.
func (c *Console) signedIn(h func(http.ResponseWriter, *http.Request, *session)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s := c.session(r)
		if s != nil {
			live, err := c.d.Sessions.Has(r.Context(), s.Nonce)
			if err != nil {
				// Fail closed: a session that may have been signed out
				// does nothing.
				c.opts.Logger.Error("console: cannot read the list of live sessions", "err", err)
				http.Error(w, "the console cannot tell whether this session was signed out (its store is unavailable); try again shortly",
					http.StatusServiceUnavailable)
				return
			}
			if !live {
				// Signed out, or begun before the list lost its data.
				s = nil
			}
		}
		if s == nil {
			if (r.Method == http.MethodGet || r.Method == http.MethodHead) && !strings.HasSuffix(r.URL.Path, "/rows") {
				http.Redirect(w, r, "/console/signin?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
				return
			}
			http.Error(w, "sign in first: the session is missing or has expired", http.StatusUnauthorized)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			if err := parseForm(w, r); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			got := r.Header.Get("X-CSRF-Token")
			if got == "" {
				got = r.PostFormValue("csrf")
			}
			if subtle.ConstantTimeCompare([]byte(got), []byte(c.csrf(s))) != 1 {
				http.Error(w, "the form is stale or did not come from this console (CSRF token missing or wrong); reload the page and try again",
					http.StatusForbidden)
				return
			}
		}
		h(w, r, s)
	}
}

// parseForm reads a state change's form, role file uploads included, up to
// maxUpload bytes.
func parseForm(w http.ResponseWriter, r *http.Request) error {
	r.Body = http.MaxBytesReader(w, r.Body, maxUpload)
	var err error
	if strings.HasPrefix(r.Header.Get("Content-Type"), "multipart/form-data") {
		err = r.ParseMultipartForm(maxUpload)
	} else {
		err = r.ParseForm()
	}
	if err != nil {
		return errors.New("the form could not be read (at most 4 MiB in all): " + err.Error())
	}
	return nil
}

type signInData struct {
	Next, Name string
}

func (c *Console) signInPage(w http.ResponseWriter, r *http.Request) {
	c.render(w, http.StatusOK, "signin", page{Title: "Sign in", Data: signInData{Next: safeNext(r.URL.Query().Get("next"))}})
}

// tokenPrefixes start AMG's secrets: agent tokens and the admin token
// (admin.TokenPrefix, which admin, importing this package, keeps).
var tokenPrefixes = []string{tokens.Prefix, "amgadm_"}

// looksLikeToken reports whether s holds the start of an AMG secret.
func looksLikeToken(s string) bool {
	for _, p := range tokenPrefixes {
		if strings.Contains(s, p) {
			return true
		}
	}
	return false
}

// cleanName is the name an operator signs in with as a session keeps it.
// It is who decides, so it follows the rule a decision's "by" does (see
// approval.CleanDecision); and it is logged, shown and recorded, so one
// that looks like a token, likely pasted into the wrong field, is refused.
func cleanName(name string) (string, error) {
	by, _, err := approval.CleanDecision(name, "")
	if err == nil && looksLikeToken(by) {
		err = errors.New("a name must not be a token")
	}
	return by, err
}

func (c *Console) signIn(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
	given := r.PostFormValue("name")
	name, nameErr := cleanName(given)
	token := strings.TrimSpace(r.PostFormValue("token"))
	next := safeNext(r.PostFormValue("next"))
	problem := ""
	switch {
	case nameErr != nil && looksLikeToken(given):
		// Never back in the form, where it would show.
		name = ""
		problem = "That looks like a token, not a name. Give your name (up to 64 characters), and the admin token in the field below it."
	case nameErr != nil:
		name = strings.TrimSpace(given) // back in the form, to correct
		problem = "Give your name (up to 64 characters): the audit log records who decides."
	case c.d.Token == "" || subtle.ConstantTimeCompare([]byte(token), []byte(c.d.Token)) != 1:
		problem = "That is not the admin token. It is in admin.token in the gateway's data directory."
	}
	if problem != "" {
		// A name the check refused may be a secret: only its length is
		// logged.
		who := slog.String("name", name)
		if nameErr != nil {
			who = slog.Int("name_bytes", len(given))
		}
		c.opts.Logger.Warn("console: sign-in refused", who, "remote", r.RemoteAddr, "why", problem)
		c.render(w, http.StatusUnauthorized, "signin", page{Title: "Sign in", Problem: problem, Data: signInData{Next: next, Name: name}})
		return
	}
	var nonce [16]byte
	rand.Read(nonce[:])
	s := &session{Name: name, Expires: c.opts.Now().Add(sessionTTL).Unix(), Nonce: hex.EncodeToString(nonce[:])}
	if err := c.d.Sessions.Add(r.Context(), s.Nonce, time.Unix(s.Expires, 0)); err != nil {
		c.opts.Logger.Error("console: session not recorded", "name", name, "err", err)
		http.Error(w, "signing in failed: the session could not be recorded (its store is unavailable); try again shortly",
			http.StatusServiceUnavailable)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: c.cookie(s), Path: "/console/", MaxAge: int(sessionTTL / time.Second),
		HttpOnly: true, Secure: secure(r), SameSite: http.SameSiteStrictMode})
	c.opts.Logger.Info("console: signed in", "name", name, "remote", r.RemoteAddr)
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (c *Console) signOut(w http.ResponseWriter, r *http.Request, s *session) {
	// The cookie is cleared only once the session is off the list: a copy
	// of it must stop working too, and the operator must not believe it
	// has when it has not.
	if err := c.d.Sessions.Remove(r.Context(), s.Nonce); err != nil {
		c.opts.Logger.Error("console: sign-out not recorded", "name", s.Name, "err", err)
		http.Error(w, "signing out failed: the session could not be recorded as signed out (its store is unavailable), so it still works; try again shortly",
			http.StatusServiceUnavailable)
		return
	}
	c.opts.Logger.Info("console: signed out", "name", s.Name, "remote", r.RemoteAddr)
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: "", Path: "/console/", MaxAge: -1,
		HttpOnly: true, Secure: secure(r), SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, "/console/signin", http.StatusSeeOther)
}

// secure reports whether the operator reached the console over HTTPS,
// directly or through a proxy that says so; the cookie is then Secure. A
// client that lies about it only keeps its own cookie from being sent over
// plain HTTP.
func secure(r *http.Request) bool {
	return r.TLS != nil || strings.EqualFold(r.Header.Get("X-Forwarded-Proto"), "https")
}

// safeNext keeps a post-sign-in redirect inside the console: a path under
// /console/ once dot segments (encoded or not) are resolved, with its query.
func safeNext(next string) string {
	const home = "/console/approvals"
	u, err := url.Parse(next)
	if err != nil || u.Scheme != "" || u.Host != "" || u.Opaque != "" || !strings.HasPrefix(next, "/") ||
		strings.HasPrefix(next, "//") || strings.ContainsAny(next, "\\\r\n") {
		return home
	}
	clean := path.Clean(u.Path)
	if !strings.HasPrefix(clean, "/console/") {
		return home
	}
	return (&url.URL{Path: clean, RawQuery: u.RawQuery}).String()
}
