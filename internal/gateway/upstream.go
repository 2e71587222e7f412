package gateway

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"syscall"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/amgateway/amg/internal/broker"
	"github.com/amgateway/amg/internal/config"
	"github.com/amgateway/amg/internal/secrets"
	"github.com/amgateway/amg/xds"
)

// Builtins are the MCP servers compiled into amg, by the name a config's
// builtin field uses.
type Builtins map[string]*mcp.Server

// upstreams turns the configured upstreams into the broker's. Secrets are
// resolved each time a connection is made, never earlier and never kept
// beyond it, so a rotated secret is used by the next connection.
// wrap, if set, instruments each HTTP upstream's transport (tracing).
// The process groups of stdio upstreams are recorded in stdio, which
// kills those still running when it ends (see commandTransport).
func upstreams(stdio *stdioGroups, cfg *config.Config, src secrets.Source, builtins Builtins, wrap func(http.RoundTripper) http.RoundTripper) ([]broker.Upstream, error) {
	var out []broker.Upstream
	for _, name := range cfg.Names {
		u := cfg.Upstreams[name]
		b := broker.Upstream{Name: name, CallTimeout: u.CallTimeout, ConnectTimeout: u.ConnectTimeout}
		switch {
		case u.URL != "":
			b.Transport = httpTransport(u, src, cfg.Envoy.EgressAddress, wrap)
		case len(u.Command) > 0:
			b.Transport = commandTransport(stdio, u, src)
		case u.Builtin != "":
			srv, ok := builtins[u.Builtin]
			if !ok {
				return nil, fmt.Errorf("upstream %q: no built-in server %q", name, u.Builtin)
			}
			b.Transport = inMemoryTransport(srv)
		default:
			return nil, fmt.Errorf("upstream %q: no url, command or builtin", name)
		}
		out = append(out, b)
	}
	return out, nil
}

// pooledTransport is the HTTP transport of one upstream, shared by all the
// sessions with it. Each agent session has its own upstream session, so
// many requests to one host are in flight at once; the default pool keeps
// only two idle connections per host and would dial anew for most of them.
func pooledTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = 1024
	t.MaxIdleConnsPerHost = 256
	return t
}

// httpTransport connects to u over Streamable HTTP, through Envoy's egress
// listener at egress when that is set.
func httpTransport(u *config.Upstream, src secrets.Source, egress string, wrap func(http.RoundTripper) http.RoundTripper) func(context.Context) (mcp.Transport, error) {
	var base http.RoundTripper = pooledTransport()
	if wrap != nil {
		base = wrap(base)
	}
	if egress != "" {
		base = &viaEgress{base: base, addr: egress, host: xds.EgressHost(u.Name)}
	}
	return func(ctx context.Context) (mcp.Transport, error) {
		headers := make(map[string]secrets.Secret, len(u.Headers))
		for k, t := range u.Headers {
			v, err := t.Expand(ctx, src)
			if err != nil {
				// Names the server and the header; the error names the ref.
				return nil, fmt.Errorf("upstream %q: header %s: %w", u.Name, k, err)
			}
			headers[k] = v
		}
		return &mcp.StreamableClientTransport{
			Endpoint:   u.URL,
			HTTPClient: &http.Client{Transport: &withHeaders{base: base, headers: headers}, CheckRedirect: refuseRedirect},
		}, nil
	}
}

// errRedirect is an upstream's redirect, which the gateway does not follow:
// withHeaders would set the upstream's credentials on the request to
// wherever it points (net/http drops Authorization when a redirect leaves
// the host; withHeaders would set it again), a tool call's body would go
// along, and the operator configured this URL, not another.
var errRedirect = errors.New("the upstream answered with a redirect, which the gateway does not follow; configure the URL it redirects to")

func refuseRedirect(*http.Request, []*http.Request) error { return errRedirect }

// withHeaders sets the upstream's configured headers on every request of a
// connection. The agent's own headers never reach this client: the broker
// builds its upstream requests itself.
type withHeaders struct {
	base    http.RoundTripper
	headers map[string]secrets.Secret
}

func (h *withHeaders) RoundTrip(r *http.Request) (*http.Response, error) {
	if len(h.headers) == 0 {
		return h.base.RoundTrip(r)
	}
	r = r.Clone(r.Context())
	for k, v := range h.headers {
		r.Header.Set(k, v.Reveal())
	}
	return h.base.RoundTrip(r)
}

// viaEgress sends an upstream's requests to Envoy's egress listener, which
// routes them by Host to the upstream's cluster and speaks TLS to it, so
// that the hop from AMG to Envoy is plain HTTP on a private network.
type viaEgress struct {
	base       http.RoundTripper
	addr, host string
}

func (v *viaEgress) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.URL.Scheme, r.URL.Host, r.Host = "http", v.addr, v.host
	return v.base.RoundTrip(r)
}

// commandTransport starts u's command for each session, in a process
// group of its own, recorded in groups (see stdioGroups): the SDK ends a
// session's process (closing its input, then signalling it), but not what
// the process started, and a process that ignores both would outlive the
// gateway.
func commandTransport(groups *stdioGroups, u *config.Upstream, src secrets.Source) func(context.Context) (mcp.Transport, error) {
	return func(ctx context.Context) (mcp.Transport, error) {
		env := make([]string, 0, len(u.Env))
		for k, t := range u.Env {
			v, err := t.Expand(ctx, src)
			if err != nil {
				return nil, fmt.Errorf("upstream %q: env %s: %w", u.Name, k, err)
			}
			env = append(env, k+"="+v.Reveal())
		}
		// The server gets the configured environment only, not the
		// gateway's, which may hold other upstreams' credentials; PATH,
		// which holds none, is passed on unless configured, so that
		// launchers such as npx find their runtime.
		if _, set := u.Env["PATH"]; !set {
			env = append(env, "PATH="+os.Getenv("PATH"))
		}
		cmd := exec.Command(u.Command[0], u.Command[1:]...)
		cmd.Env = env
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		setDeathSignal(cmd.SysProcAttr)
		return &groupTransport{CommandTransport: &mcp.CommandTransport{Command: cmd}, groups: groups}, nil
	}
}

func inMemoryTransport(srv *mcp.Server) func(context.Context) (mcp.Transport, error) {
	return func(ctx context.Context) (mcp.Transport, error) {
		client, server := mcp.NewInMemoryTransports()
		if _, err := srv.Connect(ctx, server, nil); err != nil {
			return nil, err
		}
		return client, nil
	}
}
