// Package admin serves the gateway's operator endpoints on the admin
// listener: liveness, readiness and a JSON status of the policy and the
// upstreams, the approval API and the web console. Nothing an agent can
// reach is served here.
package admin

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/amgateway/amg/internal/approval"
	"github.com/amgateway/amg/internal/broker"
	"github.com/amgateway/amg/internal/console"
	"github.com/amgateway/amg/internal/hostguard"
	"github.com/amgateway/amg/internal/policy"
)

// Policies reports the policy being served and how the last reload went.
type Policies interface {
	Current() *policy.Set
	Status() policy.Status
}

// Auditor is the audit log, as far as readiness goes.
type Auditor interface {
	// Healthy reports whether the log can record; while it cannot, every
	// call is refused.
	Healthy() bool
}

// Deps is what the admin endpoints report on.
type Deps struct {
	Policies  Policies
	Upstreams func() []broker.UpstreamStatus
	// Version is the amg build.
	Version string
	// Started is when the gateway started.
	Started time.Time
	// Hosts are the host names the admin listener answers to; nil is any
	// (see hostguard.ForListener).
	Hosts hostguard.Hosts
	// Approvals, if set, are served at /api/v1/approvals to holders of
	// Token, the admin token.
	Approvals approval.Store
	Token     string
	// Now is the clock decisions are stamped with; nil means time.Now.
	Now func() time.Time
	// Metrics, if set, is served at /metrics (Prometheus text format).
	Metrics http.Handler
	// Console, if set, is the web console, served under /console/; / then
	// leads there.
	Console http.Handler
	// Draining, if set, reports whether the gateway is shutting down: its
	// listeners then take no new calls, so it is not ready.
	Draining func() bool
	// NotReady, if set, says why the gateway is not ready for another
	// reason ("" when there is none).
	NotReady func() string
	// Audit, if set, is the audit log: while it cannot record, every call
	// is refused, so the gateway is not ready.
	Audit Auditor
}

// Handler returns the admin endpoints:
//
//	GET /healthz        200 while the process serves
//	GET /readyz         200 once a policy is compiled, while the audit log can record, unless
//	                    Deps.NotReady says otherwise, and until shutdown begins, else 503 saying why
//	GET /api/v1/status  the policy, its last reload and the upstreams, as JSON
//	/api/v1/approvals   calls waiting for a human (see approvals), with the admin token
//	GET /metrics        Prometheus metrics
//	/console/           the web console, signed in with the admin token
func Handler(d Deps) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if d.Draining != nil && d.Draining() {
			// The agents' listeners are closing: a load balancer must
			// send no more calls here.
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte("shutting down\n"))
			return
		}
		if why := notReady(d); why != "" {
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte(why + "\n"))
			return
		}
		if d.Policies.Current() == nil {
			// Without a policy every request is denied: not ready.
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte("no policy compiled\n"))
			return
		}
		if d.Audit != nil && !d.Audit.Healthy() {
			// Every call is refused rather than left unaudited.
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte("audit log cannot record\n"))
			return
		}
		w.Write([]byte("ready\n"))
	})
	mux.HandleFunc("GET /api/v1/status", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, status(d))
	})
	if d.Approvals != nil {
		approvals(mux, d)
	}
	if d.Metrics != nil {
		mux.Handle("GET /metrics", d.Metrics)
	}
	if d.Console != nil {
		mux.Handle("/console/", d.Console)
		mux.Handle("GET /{$}", http.RedirectHandler("/console/", http.StatusSeeOther))
	}
	return d.Hosts.Guard(mux)
}

// notReady is d.NotReady's reason, if any.
func notReady(d Deps) string {
	if d.NotReady == nil {
		return ""
	}
	return d.NotReady()
}

// Status is the body of /api/v1/status.
type Status struct {
	Version   string                  `json:"version"`
	Started   time.Time               `json:"started"`
	Policy    PolicyStatus            `json:"policy"`
	Upstreams []broker.UpstreamStatus `json:"upstreams"`
}

// PolicyStatus describes the policy being served and the last reload.
type PolicyStatus struct {
	// Version is the version being served; empty when none compiled.
	Version string   `json:"version"`
	Roles   []string `json:"roles"`
	// LastReload is when the policy directory was last compiled, and
	// LastError why that failed (the previous version stays in force).
	LastReload time.Time `json:"last_reload"`
	LastError  string    `json:"last_error,omitempty"`
	// Misfits is what the policy names that the upstreams do not offer
	// (a tool, an argument), which does not stop it loading.
	Misfits string `json:"misfits,omitempty"`
}

func status(d Deps) Status {
	st := Status{Version: d.Version, Started: d.Started, Upstreams: d.Upstreams()}
	ps := d.Policies.Status()
	st.Policy.LastReload = ps.At
	if ps.Err != nil {
		st.Policy.LastError = ps.Err.Error()
	}
	if ps.Misfits != nil {
		st.Policy.Misfits = ps.Misfits.Error()
	}
	st.Policy.Roles = []string{}
	if set := d.Policies.Current(); set != nil {
		st.Policy.Version = set.VersionString()
		for _, r := range set.Roles() {
			st.Policy.Roles = append(st.Policy.Roles, r.Name)
		}
	}
	return st
}

// writeJSON writes v indented to a bounded depth (see console.Indent): an
// approval's request nests as deep as its agent made it.
func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	data, err := json.Marshal(v)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	text, _ := console.Indent(data)
	w.Write(append(text, '\n'))
}
