package console

import (
	"errors"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/amgateway/amg/internal/tokens"
)

type tokenRow struct {
	tokens.Token
	Status string
}

type tokensData struct {
	Rows  []tokenRow
	Roles []string
	TTLs  []ttlChoice
	// Issued is the token just issued, with Secret shown this once.
	Issued *tokenRow
	Secret string
	// Form keeps what was typed when issuing failed.
	Agent, Role, TTL string
	// Failed is set when the tokens could not be listed: the page then
	// shows no list rather than an empty one.
	Failed bool
}

type ttlChoice struct{ Value, Label string }

var ttlChoices = []ttlChoice{{"24h", "1 day"}, {"168h", "7 days"}, {"720h", "30 days"}, {"2160h", "90 days"}, {"0", "never expires"}}

func (c *Console) tokensData(r *http.Request) (tokensData, error) {
	d := tokensData{TTLs: ttlChoices, TTL: "720h"}
	if set := c.d.Policies.Current(); set != nil {
		for _, role := range set.Roles() {
			d.Roles = append(d.Roles, role.Name)
		}
	}
	list, err := c.d.Tokens.List(r.Context())
	if err != nil {
		d.Failed = true
		return d, err
	}
	now := c.opts.Now()
	for _, t := range list {
		d.Rows = append(d.Rows, tokenRow{Token: t, Status: t.Status(now)})
	}
	// Newest first: the one just issued or revoked is at the top.
	sortBy(d.Rows, func(t tokenRow) time.Time { return t.Created }, true)
	return d, nil
}

func (c *Console) tokensPage(w http.ResponseWriter, r *http.Request, s *session) {
	p := page{Title: "Tokens", Nav: "tokens", Session: s, CSRF: c.csrf(s)}
	status := http.StatusOK
	d, err := c.tokensData(r)
	if err != nil {
		c.opts.Logger.Error("console: listing tokens", "err", err)
		p.Problem, status = "The token store could not be read: "+err.Error(), http.StatusServiceUnavailable
	}
	q := r.URL.Query()
	if id := q.Get("revoked"); tokens.ValidID(id) {
		p.Notice = "Revoked " + id + ": its next request is refused."
	}
	p.Data = d
	c.render(w, status, "tokens", p)
}

func (c *Console) issueToken(w http.ResponseWriter, r *http.Request, s *session) {
	p := page{Title: "Tokens", Nav: "tokens", Session: s, CSRF: c.csrf(s)}
	agent, role, ttlText := strings.TrimSpace(r.PostFormValue("agent")), r.PostFormValue("role"), r.PostFormValue("ttl")
	ttl, perr := time.ParseDuration(ttlText)
	nameErr := tokens.CheckName(agent)
	var problem string
	status := http.StatusBadRequest // the form's fault, unless the store fails
	switch {
	case nameErr != nil:
		problem = "Agent: " + nameErr.Error() + "."
	case c.d.Policies.Current() == nil:
		problem = "No policy is compiled, so no role can be checked; fix the policy first."
	case !hasRole(c.d.Policies, role):
		problem = "Role: the policy in force has no role " + quote(role) + "."
	case perr != nil || ttl < 0:
		problem = "Lifetime: choose one of the offered lifetimes."
	}
	var secret string
	var issued tokens.Token
	if problem == "" {
		var err error
		if secret, issued, err = c.d.Tokens.Issue(r.Context(), agent, role, ttl); err != nil {
			c.opts.Logger.Error("console: issuing a token", "agent", agent, "err", err)
			problem, status = "The token could not be issued: "+err.Error(), http.StatusServiceUnavailable
		}
	}
	d, err := c.tokensData(r)
	if err != nil && problem == "" {
		p.Problem = "The token store could not be read: " + err.Error()
	}
	if problem != "" {
		p.Problem = problem
		d.Agent, d.Role, d.TTL = agent, role, ttlText
		p.Data = d
		c.render(w, status, "tokens", p)
		return
	}
	c.opts.Logger.Info("console: token issued", "id", issued.ID, "agent", agent, "role", role, "by", s.Name)
	d.Issued, d.Secret = &tokenRow{Token: issued, Status: issued.Status(c.opts.Now())}, secret
	p.Data = d
	c.render(w, http.StatusOK, "tokens", p)
}

func (c *Console) revokeToken(w http.ResponseWriter, r *http.Request, s *session) {
	id := r.PathValue("id")
	if !tokens.ValidID(id) {
		http.Error(w, "not a token id", http.StatusBadRequest)
		return
	}
	err := c.d.Tokens.Revoke(r.Context(), id)
	if err != nil {
		p := page{Title: "Tokens", Nav: "tokens", Session: s, CSRF: c.csrf(s)}
		status := http.StatusServiceUnavailable
		if errors.Is(err, tokens.ErrUnknown) {
			status, p.Problem = http.StatusNotFound, "There is no token "+id+"."
		} else {
			c.opts.Logger.Error("console: revoking a token", "id", id, "err", err)
			p.Problem = "The token could not be revoked: " + err.Error()
		}
		// The problem is the revocation's; a list that cannot be read as
		// well shows as none (Failed), never as an empty one.
		p.Data, _ = c.tokensData(r)
		c.render(w, status, "tokens", p)
		return
	}
	c.opts.Logger.Info("console: token revoked", "id", id, "by", s.Name)
	http.Redirect(w, r, "/console/tokens?"+url.Values{"revoked": {id}}.Encode(), http.StatusSeeOther)
}

func hasRole(p Policies, name string) bool {
	set := p.Current()
	if set == nil {
		return false
	}
	_, ok := set.Role(name)
	return ok
}

func quote(s string) string { return "\u201c" + s + "\u201d" }
