package config

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/amgateway/amg/internal/audit"
	"github.com/amgateway/amg/internal/diag"
	"github.com/amgateway/amg/internal/hostguard"
	"github.com/amgateway/amg/internal/secrets"
	"github.com/amgateway/amg/internal/shadow"
	"github.com/amgateway/amg/mcpfilter"
)

// loader walks the YAML node tree, so that every problem has a position,
// and keeps going after each one.
type loader struct {
	diag.Walker
	// set holds the value nodes, by YAML path, of the settings checked
	// against one another once the whole file is read (whether Envoy can
	// be told them depends on xds_listen), each one that parsed.
	set map[string]*yaml.Node
}

var (
	configKeys = []string{"listen", "allowed_origins", "admin_listen", "authz_listen", "broker_listen", "xds_listen", "envoy", "vault", "redis", "approvals",
		"console", "audit", "data_dir", "policy_dir", "max_body_bytes", "max_sessions_per_agent", "max_protocol_version", "unprefixed_names", "upstreams"}
	approvalKeys = []string{"ttl", "max_pending_per_agent", "webhook", "webhook_secret"}
	consoleKeys  = []string{"ready_days", "ready_min_calls", "trace_url", "staged_policy_dir"}
	auditKeys    = []string{"max_file_bytes", "sync", "sync_interval", "stdout", "stream_max_records"}
	redisKeys    = []string{"address", "username", "password", "db", "tls", "decision_key", "audit_key"}
	tlsKeys      = []string{"ca_file", "server_name", "cert_file", "key_file"}
	vaultKeys    = []string{"address", "token", "approle", "cache_ttl"}
	appRoleKeys  = []string{"role_id", "secret_id", "mount"}
	envoyKeys    = []string{"listen", "tls", "egress_listen", "egress_address", "authz_address", "broker_addresses", "authz_timeout", "route_timeout",
		"tracing_address", "tracing_sampling"}
)

func (l *loader) config(cfg *Config, data []byte) {
	l.set = map[string]*yaml.Node{}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if !errors.Is(err, io.EOF) { // EOF: an empty file, all defaults
			l.YAMLError(data, err)
		}
		return
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case errors.Is(err, io.EOF):
	case err != nil:
		l.YAMLError(data, err)
	default:
		// Silently ignoring a second document would ignore half the file.
		l.Errorf(&extra, "", "a config file holds one YAML document; this is a second one")
	}
	if len(doc.Content) == 0 {
		return
	}
	root := doc.Content[0]
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return
	}
	var unprefixed *yaml.Node
	l.Fields(root, "", configKeys, func(key string, _, v *yaml.Node) {
		switch key {
		case "listen":
			l.listen(v, key, &cfg.Listen, false)
		case "allowed_origins":
			cfg.AllowedOrigins = l.origins(v, key)
		case "admin_listen":
			l.listen(v, key, &cfg.AdminListen, false)
		case "authz_listen":
			l.listen(v, key, &cfg.AuthzListen, false)
		case "broker_listen":
			l.listen(v, key, &cfg.BrokerListen, true)
		case "xds_listen":
			l.listen(v, key, &cfg.XDSListen, true)
		case "envoy":
			l.envoy(v, key, &cfg.Envoy)
		case "approvals":
			l.approvals(v, key, cfg)
		case "console":
			l.console(v, key, &cfg.Console)
		case "audit":
			l.audit(v, key, &cfg.Audit)
		case "vault":
			l.vault(v, key, &cfg.Vault)
		case "redis":
			l.redis(v, key, &cfg.Redis)
		case "data_dir":
			l.dir(v, key, &cfg.DataDir)
		case "policy_dir":
			l.dir(v, key, &cfg.PolicyDir)
		case "max_body_bytes":
			if n, ok := l.Integer(v, key, 1); ok {
				cfg.MaxBodyBytes = n
				l.set[key] = v
			}
		case "max_sessions_per_agent":
			if n, ok := l.Integer(v, key, 1); ok {
				cfg.MaxSessionsPerAgent = n
			}
		case "max_protocol_version":
			// Unquoted, YAML reads a version as a date.
			if v.Kind == yaml.ScalarNode && (v.Tag == "!!str" || v.Tag == "!!timestamp") && slices.Contains(agentProtocolCaps, v.Value) {
				cfg.MaxProtocolVersion = v.Value
			} else {
				l.Errorf(v, key, "must be %s", strings.Join(agentProtocolCaps, " or "))
			}
		case "unprefixed_names":
			if b, ok := l.Boolean(v, key); ok {
				cfg.UnprefixedNames, unprefixed = b, v
			}
		case "upstreams":
			cfg.Upstreams = l.upstreams(v, key)
		}
	})
	if cfg.UnprefixedNames && len(cfg.Upstreams) != 1 {
		l.Errorf(unprefixed, "unprefixed_names", "needs exactly one upstream (there are %d): with several, names must say which server they belong to", len(cfg.Upstreams))
	}
	l.listeners(cfg)
	l.routeTimeout(cfg)
}

// listeners reports pairs of listeners that would claim one address:
// amg's own, which one process cannot serve twice, and Envoy's two. Each
// problem is reported where the file sets one of the pair. amg's listeners
// are not checked against Envoy's: they are bound by other processes,
// usually on other hosts, where the same address is no conflict; on one
// host the second to bind fails, in plain sight.
func (l *loader) listeners(cfg *Config) {
	cfg.checkListeners(func(path string) bool { return l.set[path] != nil }, func(path, msg string) {
		l.Errorf(l.set[path], path, "%s", msg)
	})
}

// checkListeners reports, through report, each of the problems listeners
// describes, at the listener of the two that set says was given, and,
// with an xDS server, a listener whose address Envoy cannot be told and
// the problems checkEnvoy finds.
func (cfg *Config) checkListeners(set func(path string) bool, report func(path, msg string)) {
	type listener struct{ path, addr string }
	for _, g := range []struct {
		ls  []listener
		why string
	}{
		{[]listener{{"listen", cfg.Listen}, {"admin_listen", cfg.AdminListen}, {"authz_listen", cfg.AuthzListen},
			{"broker_listen", cfg.BrokerListen}, {"xds_listen", cfg.XDSListen}},
			"amg cannot serve two listeners on one address"},
		{[]listener{{"envoy.listen", cfg.Envoy.Listen}, {"envoy.egress_listen", cfg.Envoy.EgressListen}},
			"Envoy would keep only one of the two listeners, whichever it happened to process first, " +
				"and with the egress one on the agent port, agents would reach the upstreams without ext_authz"},
	} {
		for j, b := range g.ls {
			for _, a := range g.ls[:j] {
				if !overlap(a.addr, b.addr) {
					continue
				}
				at, other := b, a
				if !set(b.path) {
					at, other = a, b
				}
				report(at.path, fmt.Sprintf("%s overlaps %s (%s): %s", at.addr, other.path, other.addr, g.why))
			}
		}
	}
	if cfg.XDSListen == "" {
		return
	}
	// Envoy's addresses follow the listeners when the file leaves them out.
	if _, err := cfg.EnvoyAuthzAddress(); err != nil {
		report("authz_listen", err.Error())
	}
	if _, err := cfg.EnvoyBrokerAddresses(); err != nil {
		report("broker_listen", err.Error())
	}
	cfg.checkEnvoy(report)
}

// checkEnvoy reports, through report, the values an xDS server cannot
// tell Envoy, which the loader accepts for a gateway without one: they
// are refused here, each at its own setting and all at once, rather than
// by xds.Build, which stops at the first, after the gateway has started
// opening its data directory.
func (cfg *Config) checkEnvoy(report func(path, msg string)) {
	e := &cfg.Envoy
	for _, l := range []struct{ path, addr string }{{"envoy.listen", e.Listen}, {"envoy.egress_listen", e.EgressListen}} {
		if host, _, err := net.SplitHostPort(l.addr); err == nil && ListenIP(host) == nil {
			report(l.path, fmt.Sprintf("%s: Envoy listens on IP addresses only, not on host names: give an IP address, or 0.0.0.0 for all of them", l.addr))
		}
	}
	eps := []struct{ path, addr string }{{"envoy.authz_address", e.AuthzAddress}, {"envoy.tracing_address", e.TracingAddress}}
	for i, a := range e.BrokerAddresses {
		eps = append(eps, struct{ path, addr string }{fmt.Sprintf("envoy.broker_addresses[%d]", i), a})
	}
	for _, ep := range eps {
		if _, port, err := net.SplitHostPort(ep.addr); err == nil {
			if n, err := strconv.ParseUint(port, 10, 16); err == nil && n == 0 {
				report(ep.path, fmt.Sprintf("%s: port 0 cannot be connected to: give the port Envoy is to connect to", ep.addr))
			}
		}
	}
	if cfg.MaxBodyBytes > MaxEnvoyBodyBytes {
		report("max_body_bytes", fmt.Sprintf("must be at most %d with xds_listen: Envoy's buffer limits are 32-bit", MaxEnvoyBodyBytes))
	}
}

// overlap reports whether listeners on a and b (host:port, as addr
// checked them; "" is none) would claim the same connections: the same
// port, other than 0 (which picks a free one), on the same host, or on any
// where either host is a wildcard.
func overlap(a, b string) bool {
	ha, pa, errA := net.SplitHostPort(a)
	hb, pb, errB := net.SplitHostPort(b)
	if errA != nil || errB != nil {
		return false
	}
	na, errA := strconv.ParseUint(pa, 10, 16)
	nb, errB := strconv.ParseUint(pb, 10, 16)
	if errA != nil || errB != nil || na != nb || na == 0 {
		return false
	}
	ipa, ipb := ListenIP(ha), ListenIP(hb)
	switch {
	case ipa != nil && ipa.IsUnspecified(), ipb != nil && ipb.IsUnspecified():
		return true
	case ipa != nil && ipb != nil:
		return ipa.Equal(ipb)
	}
	return strings.EqualFold(ha, hb)
}

// ListenIP is the address a listener on host binds: an empty host is
// every address, and localhost the IPv4 loopback, in Go as in Envoy. It is
// nil for other host names, on which Go listens at whatever they resolve
// to and Envoy does not listen at all.
func ListenIP(host string) net.IP {
	switch {
	case host == "":
		return net.IPv4zero
	case strings.EqualFold(host, "localhost"):
		return net.IPv4(127, 0, 0, 1)
	}
	return net.ParseIP(host)
}

// routeTimeout sets envoy.route_timeout, when the file leaves it out, to
// longer than a call can take, and otherwise checks that it is.
func (l *loader) routeTimeout(cfg *Config) {
	longest := cfg.LongestRequest()
	n := l.set["envoy.route_timeout"]
	if n == nil {
		cfg.Envoy.RouteTimeout = longest + routeTimeoutMargin
		return
	}
	if cfg.Envoy.RouteTimeout > longest {
		return
	}
	limit := fmt.Sprintf("approvals.ttl (%v)", cfg.ApprovalTTL)
	if name, call := cfg.longestCall(); name != "" {
		limit = fmt.Sprintf("approvals.ttl + the longest upstream call timeout (%v + %v of upstreams.%s = %v)", cfg.ApprovalTTL, call, name, longest)
	}
	l.Errorf(n, "envoy.route_timeout", "must be longer than %s: Envoy's route timeout covers the whole response, "+
		"so it would cut off a call approved late while its upstream still answers, "+
		"and one whose approval expires before the broker can say so (left out, it is %v)", limit, longest+routeTimeoutMargin)
}

func (l *loader) upstreams(n *yaml.Node, path string) map[string]*Upstream {
	ups := map[string]*Upstream{}
	if n.Kind == yaml.MappingNode && len(n.Content) == 0 {
		l.Errorf(n, path, "must declare at least one upstream; leave upstreams out to use the built-in demo")
		return ups
	}
	seen := map[string]*yaml.Node{} // lower-cased name -> key node
	l.Fields(n, path, nil, func(name string, k, v *yaml.Node) {
		lower := strings.ToLower(name)
		if prev, dup := seen[lower]; dup {
			l.Errorf(k, path+"."+name, "differs from %s (line %d) only in case; upstream names must differ in more, "+
				"since Envoy's egress listener routes on them as host names, which it matches ignoring case", prev.Value, prev.Line)
		} else {
			seen[lower] = k
		}
		if u := l.upstream(name, k, v); u != nil {
			ups[name] = u
		}
	})
	return ups
}

var (
	upstreamKeys = []string{"url", "command", "builtin", "env", "headers", "timeouts", "allow_insecure"}
	timeoutKeys  = []string{"connect", "call"}
)

func (l *loader) upstream(name string, k, v *yaml.Node) *Upstream {
	path := "upstreams." + name
	// A bad name does not stop the walk: the body's problems are reported
	// with it.
	nameErr := mcpfilter.ValidateServerName(name)
	if nameErr != nil {
		l.Errorf(k, path, "invalid upstream name: %v", nameErr)
	}
	u := &Upstream{
		Name:           name,
		ConnectTimeout: DefaultConnectTimeout,
		CallTimeout:    DefaultCallTimeout,
		Pos:            l.At(k),
	}
	var kinds []string                  // url, command, builtin, in file order
	keyNodes := map[string]*yaml.Node{} // every key set, for problems about it
	var urlNode *yaml.Node
	l.Fields(v, path, upstreamKeys, func(key string, k, v *yaml.Node) {
		p := path + "." + key
		keyNodes[key] = k
		switch key {
		case "url":
			kinds = append(kinds, key)
			if s, ok := l.Str(v, p); ok {
				u.URL, urlNode = s, v
			}
		case "command":
			kinds = append(kinds, key)
			u.Command = l.command(v, p)
		case "builtin":
			kinds = append(kinds, key)
			if s, ok := l.Str(v, p); ok {
				if !slices.Contains(builtins, s) {
					l.Errorf(v, p, "unknown builtin %q (expected one of: %s)", s, strings.Join(builtins, ", "))
				}
				u.Builtin = s
			}
		case "env":
			u.Env = l.env(v, p)
		case "headers":
			u.Headers = l.headers(v, p)
		case "timeouts":
			l.Fields(v, p, timeoutKeys, func(key string, _, v *yaml.Node) {
				d, ok := l.Duration(v, p+"."+key)
				switch {
				case !ok:
				case key == "connect":
					u.ConnectTimeout = d
				case key == "call":
					u.CallTimeout = d
				}
			})
		case "allow_insecure":
			u.AllowInsecure, _ = l.Boolean(v, p)
		}
	})
	if v.Kind != yaml.MappingNode {
		return nil
	}
	switch len(kinds) {
	case 0:
		l.Errorf(k, path, "must set exactly one of url, command or builtin")
	case 1:
		// Keys that belong to another kind are mistakes, not no-ops: a
		// header on a stdio server would silently never be sent.
		only := map[string]string{"headers": "url", "allow_insecure": "url", "env": "command"}
		for _, key := range upstreamKeys {
			if kind, ok := only[key]; ok && kind != kinds[0] && keyNodes[key] != nil {
				l.Errorf(keyNodes[key], path+"."+key, "%s applies only to %s upstreams, and this one has %s", key, kind, kinds[0])
			}
		}
		if urlNode != nil {
			l.checkURL(urlNode, path+".url", u)
		}
	default:
		l.Errorf(keyNodes[kinds[1]], path+"."+kinds[1], "%s and %s are both set; set exactly one of url, command or builtin",
			kinds[0], kinds[1])
	}
	if nameErr != nil {
		return nil
	}
	return u
}

// checkURL checks u.URL. Messages never quote the URL: it may carry a password.
func (l *loader) checkURL(n *yaml.Node, path string, u *Upstream) {
	pu, err := url.Parse(u.URL)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		l.Errorf(n, path, "invalid URL: %v", err)
		return
	}
	portErr := checkPort(pu)
	switch {
	case pu.Scheme == "":
		l.Errorf(n, path, "must be an absolute URL starting with https:// or http://")
	case pu.Scheme != "http" && pu.Scheme != "https":
		l.Errorf(n, path, "scheme must be http or https, got %q", pu.Scheme)
	case pu.Hostname() == "":
		l.Errorf(n, path, "has no host")
	case portErr != nil:
		l.Errorf(n, path, "%v", portErr)
	case pu.User != nil:
		l.Errorf(n, path, "must not contain credentials (user:password@); send them in headers with a secret reference")
	case pu.Fragment != "" || strings.HasSuffix(u.URL, "#"):
		l.Errorf(n, path, "must not have a fragment (#...)")
	case pu.Scheme == "http" && !u.AllowInsecure && !loopback(pu.Hostname()):
		l.Errorf(n, path, "plain http is allowed only to loopback hosts (localhost, 127.0.0.0/8, ::1): use https, or set allow_insecure: true to send this upstream's traffic and credentials unencrypted")
	}
}

// checkPort returns what is wrong with u's port, if it has one: url.Parse
// checks only that a port is digits, and one outside 1-65535 cannot be
// connected to. It quotes the port, never the URL.
func checkPort(u *url.URL) error {
	p := u.Port()
	if p == "" {
		return nil
	}
	if n, err := strconv.ParseUint(p, 10, 16); err != nil || n == 0 {
		return fmt.Errorf("port must be a number from 1 to 65535, got %q", p)
	}
	return nil
}

func loopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (l *loader) command(n *yaml.Node, path string) []string {
	if n.Kind != yaml.SequenceNode {
		l.Errorf(n, path, `must be a list such as ["npx", "-y", "server"], got %s`, diag.Describe(n))
		return nil
	}
	if len(n.Content) == 0 {
		l.Errorf(n, path, "must not be empty: the first element is the program to run")
		return nil
	}
	args := make([]string, 0, len(n.Content))
	for i, v := range n.Content {
		p := fmt.Sprintf("%s[%d]", path, i)
		s, ok := l.Str(v, p)
		switch {
		case !ok:
		case i == 0 && s == "":
			l.Errorf(v, p, "program must not be empty")
		case strings.IndexByte(s, 0) >= 0:
			l.Errorf(v, p, "contains a NUL byte")
		}
		args = append(args, s)
	}
	return args
}

func (l *loader) env(n *yaml.Node, path string) map[string]Template {
	env := map[string]Template{}
	l.Fields(n, path, nil, func(name string, k, v *yaml.Node) {
		p := path + "." + name
		if !envName.MatchString(name) {
			l.Errorf(k, p, "invalid environment variable name %q (expected A-Z, a-z, 0-9 and '_', not starting with a digit)", name)
			return
		}
		t, ok := l.template(v, p)
		if !ok {
			return
		}
		for _, pt := range t.parts {
			if strings.IndexByte(pt.lit, 0) >= 0 {
				l.Errorf(v, p, "contains a NUL byte")
				return
			}
		}
		env[name] = t
	})
	return env
}

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// Headers whose value is a credential: a literal one would make the config
// file a secret store.
var credentialHeaders = []string{"authorization", "proxy-authorization"}

func (l *loader) headers(n *yaml.Node, path string) map[string]Template {
	headers := map[string]Template{}
	seen := map[string]*yaml.Node{} // lower-cased name -> key node
	l.Fields(n, path, nil, func(name string, k, v *yaml.Node) {
		p := path + "." + name
		if msg := checkHeaderName(name); msg != "" {
			l.Errorf(k, p, "%s", msg)
			return
		}
		lower := strings.ToLower(name)
		if prev, dup := seen[lower]; dup {
			l.Errorf(k, p, "duplicate header: same as %s at line %d (header names are case-insensitive)", prev.Value, prev.Line)
			return
		}
		seen[lower] = k
		t, ok := l.template(v, p)
		if !ok {
			return
		}
		bad := false
		for _, pt := range t.parts {
			// Not the value, which may be a credential written by mistake.
			if badHeaderByte(pt.lit) >= 0 {
				l.Errorf(v, p, "value contains a line break or other control character")
				bad = true
				break
			}
		}
		if !bad && slices.Contains(credentialHeaders, lower) && len(t.Refs()) == 0 {
			l.Errorf(v, p, `%s carries a credential: take it from a secret reference such as "Bearer ${env:TOKEN}" rather than writing it in the config file`, name)
		}
		headers[name] = t
	})
	return headers
}

// badHeaderByte returns the index of the first byte not allowed in an HTTP
// field value (a control character other than tab), or -1.
func badHeaderByte(s string) int {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 && c != '\t' || c == 0x7f {
			return i
		}
	}
	return -1
}

// Headers the gateway or the HTTP transport sets; configuring them would
// break the upstream connection or forge the gateway's own signals.
var transportHeaders = []string{"host", "content-length", "transfer-encoding", "connection",
	"keep-alive", "proxy-connection", "te", "trailer", "upgrade"}

// checkHeaderName returns what is wrong with a configured header name, or "".
func checkHeaderName(name string) string {
	if name == "" {
		return "header name is empty"
	}
	for i := 0; i < len(name); i++ {
		if !tokenByte(name[i]) {
			return fmt.Sprintf("invalid header name %q: allowed are letters, digits and !#$%%&'*+-.^_`|~", name)
		}
	}
	lower := strings.ToLower(name)
	switch {
	case slices.Contains(transportHeaders, lower):
		return name + " is set by the HTTP transport and cannot be configured"
	case strings.HasPrefix(lower, "mcp-"):
		return name + " is an MCP protocol header; the gateway sets it"
	case strings.HasPrefix(lower, "x-amg-"):
		return name + " is reserved: x-amg-* headers carry the gateway's own decisions"
	}
	return ""
}

// tokenByte reports whether c may appear in an HTTP token (RFC 9110 5.6.2).
func tokenByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

func (l *loader) template(n *yaml.Node, path string) (Template, bool) {
	s, ok := l.Str(n, path)
	if !ok {
		return Template{}, false
	}
	t, errs := parseTemplate(s)
	for _, err := range errs {
		l.Errorf(n, path, "%v", err)
	}
	t.pos = l.At(n)
	return t, len(errs) == 0
}

// addr reads a host:port into dst, reporting whether it did.
func (l *loader) addr(n *yaml.Node, path string, dst *string) bool {
	s, ok := l.Str(n, path)
	if !ok {
		return false
	}
	if give, isURL := urlAddress(s); isURL {
		l.Errorf(n, path, "must be host:port such as 127.0.0.1:8080, not a URL or user@host: give %s", give)
		return false
	}
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		var ae *net.AddrError
		if errors.As(err, &ae) {
			err = errors.New(ae.Err)
		}
		l.Errorf(n, path, "must be host:port such as 127.0.0.1:8080, got %q: %v", s, err)
		return false
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		l.Errorf(n, path, "port must be a number from 0 to 65535, got %q", port)
		return false
	}
	*dst = s
	return true
}

// urlAddress reports whether s, where a host:port belongs, is a URL or
// user:password@host instead: either may carry a password, so s is never
// quoted whole. give is what to write instead: the host:port in s,
// quoted, or "host:port" when none can be read.
func urlAddress(s string) (give string, isURL bool) {
	if !strings.Contains(s, "://") && !strings.Contains(s, "@") {
		return "", false
	}
	if !strings.Contains(s, "://") {
		s = "//" + s // user:password@host:port, as a URL without a scheme
	}
	if u, err := url.Parse(s); err == nil && u.Host != "" {
		return strconv.Quote(u.Host), true
	}
	return "host:port", true
}

// optionalAddr is addr, where "" turns the listener off.
func (l *loader) optionalAddr(n *yaml.Node, path string, dst *string) bool {
	if n.Kind == yaml.ScalarNode && n.Value == "" {
		*dst = ""
		return true
	}
	return l.addr(n, path, dst)
}

// listen reads a listener's address, keeping its node for listeners.
func (l *loader) listen(n *yaml.Node, path string, dst *string, optional bool) {
	read := l.addr
	if optional {
		read = l.optionalAddr
	}
	if read(n, path, dst) {
		l.set[path] = n
	}
}

// percent reads a percentage: a number from 0 to 100.
func (l *loader) percent(n *yaml.Node, path string, dst *float64) {
	var v float64
	if l.LeadingZero(n, path) {
		return
	}
	if n.Kind != yaml.ScalarNode || (n.Tag != "!!int" && n.Tag != "!!float") || n.Decode(&v) != nil {
		l.Errorf(n, path, "must be a percentage from 0 to 100, got %s", diag.Describe(n))
		return
	}
	if !(v >= 0 && v <= 100) { // NaN too
		l.Errorf(n, path, "must be a percentage from 0 to 100, got %s", n.Value)
		return
	}
	*dst = v
}

func (l *loader) envoy(n *yaml.Node, path string, e *Envoy) {
	var egressListen, egressAddr, sampling *yaml.Node
	l.Fields(n, path, envoyKeys, func(key string, _, v *yaml.Node) {
		switch key {
		case "egress_listen":
			egressListen = v
		case "egress_address":
			egressAddr = v
		case "tracing_sampling":
			sampling = v
		}
		p := path + "." + key
		switch key {
		case "listen":
			l.listen(v, p, &e.Listen, false)
		case "tls":
			e.TLS = l.listenTLS(v, p)
		case "egress_listen":
			l.listen(v, p, &e.EgressListen, true)
		case "egress_address":
			l.optionalAddr(v, p, &e.EgressAddress)
		case "authz_address":
			if l.addr(v, p, &e.AuthzAddress) {
				l.set[p] = v
			}
		case "broker_addresses":
			var addrs []string
			l.List(v, p, func(_ int, ip string, item *yaml.Node) {
				// One that does not parse is kept as "", which has been
				// reported and fails the load, so that the others keep
				// their place for checkEnvoy.
				var a string
				if l.addr(item, ip, &a) {
					l.set[ip] = item
				}
				addrs = append(addrs, a)
			})
			if v.Kind == yaml.SequenceNode && len(v.Content) == 0 {
				l.Errorf(v, p, "must list at least one broker address")
			}
			e.BrokerAddresses = addrs
		case "authz_timeout", "route_timeout":
			if d, ok := l.Duration(v, p); ok && key == "authz_timeout" {
				e.AuthzTimeout = d
			} else if ok {
				e.RouteTimeout = d
				l.set[p] = v
			}
		case "tracing_address":
			if l.optionalAddr(v, p, &e.TracingAddress) {
				l.set[p] = v
			}
		case "tracing_sampling":
			l.percent(v, p, &e.TracingSampling)
		}
	})
	switch {
	case e.EgressAddress == "":
	case egressListen == nil:
		e.EgressListen = DefaultEgressListen
	case e.EgressListen == "":
		// The broker would send its upstream traffic to a listener no
		// Envoy has.
		l.Errorf(egressAddr, path+".egress_address", "needs egress_listen: no Envoy listens for upstream traffic")
	}
	if sampling != nil && e.TracingAddress == "" {
		l.Errorf(sampling, path+".tracing_sampling", "needs tracing_address: without a collector Envoy does not trace")
	}
}

// redis reads the redis section. One without an address would leave the
// gateway standalone, its tokens, rate limits and approvals per process,
// which a replica must not silently be.
func (l *loader) redis(n *yaml.Node, path string, r *Redis) {
	var address *yaml.Node
	l.Fields(n, path, redisKeys, func(key string, _, v *yaml.Node) {
		p := path + "." + key
		switch key {
		case "address":
			address = v
			// A Redis URL, as the CLI's --redis takes, holds the
			// password: never quoted, and said where it goes instead.
			if give, isURL := urlAddress(v.Value); isURL && v.Kind == yaml.ScalarNode {
				tls := ""
				if strings.HasPrefix(strings.ToLower(v.Value), "rediss://") {
					tls = ", and set redis.tls"
				}
				l.Errorf(v, p, "a URL is not an address: give %s, the user in redis.username and the password in redis.password, "+
					"as a secret reference such as \"${env:REDIS_PASSWORD}\"%s", give, tls)
				return
			}
			l.addr(v, p, &r.Address)
		case "username":
			r.Username, _ = l.Str(v, p)
		case "tls":
			r.TLS = l.tls(v, p)
		case "password":
			if t, ok := l.credential(v, p, "${env:REDIS_PASSWORD}"); ok {
				r.Password = t
			}
		case "db":
			if d, ok := l.Integer(v, p, 0); ok {
				r.DB = d
			}
		case "decision_key":
			r.DecisionKey, _ = l.credential(v, p, "${vault:kv/data/amg#decision_key}")
		case "audit_key":
			r.AuditKey, _ = l.credential(v, p, "${vault:kv/data/amg#audit_key}")
		}
	})
	if n.Kind == yaml.MappingNode && address == nil {
		l.Errorf(n, path, "needs an address")
	}
}

// credential reads a template that holds a credential, which must come
// from a secret reference: a literal one would make the config file a
// secret store. "" is no credential. A literal one is reported but still
// read, so that the section's other checks do not report it missing.
func (l *loader) credential(n *yaml.Node, path, example string) (Template, bool) {
	t, ok := l.template(n, path)
	if ok && t.String() != "" && len(t.Refs()) == 0 {
		// Not the value: it is the credential.
		l.Errorf(n, path, "is a credential: take it from a secret reference such as %q rather than writing it in the config file", example)
	}
	return t, ok
}

func (l *loader) vault(n *yaml.Node, path string, vc *Vault) {
	vc.Pos = l.At(n)
	var address *yaml.Node
	l.Fields(n, path, vaultKeys, func(key string, _, v *yaml.Node) {
		p := path + "." + key
		switch key {
		case "address":
			address = v
			s, ok := l.Str(v, p)
			if !ok {
				return
			}
			// What secrets.NewVault refuses, refused here where it has a
			// position.
			u, err := url.Parse(s)
			switch {
			case err != nil:
				l.Errorf(v, p, "must be an http(s) URL such as https://vault.example:8200")
				return
			case !isHTTPURL(s):
				l.Errorf(v, p, "must be an http(s) URL such as https://vault.example:8200, got %q", u.Redacted())
				return
			case u.User != nil:
				l.Errorf(v, p, "must not contain credentials (Vault's own come from token or approle)")
				return
			case checkPort(u) != nil:
				l.Errorf(v, p, "%v", checkPort(u))
				return
			case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
				l.Errorf(v, p, "must not have a query or fragment")
				return
			}
			vc.Address = s
		case "token":
			if t, ok := l.credential(v, p, "${env:VAULT_TOKEN}"); ok {
				l.noVaultRef(v, p, t)
				vc.Token = t
			}
		case "approle":
			l.Fields(v, p, appRoleKeys, func(k string, _, av *yaml.Node) {
				ap := p + "." + k
				switch k {
				case "role_id":
					vc.AppRoleID, _ = l.Str(av, ap)
				case "secret_id":
					if t, ok := l.credential(av, ap, "${file:/run/secrets/vault_secret_id}"); ok {
						l.noVaultRef(av, ap, t)
						vc.AppRoleSecretID = t
					}
				case "mount":
					vc.AppRoleMount, _ = l.Str(av, ap)
				}
			})
		case "cache_ttl":
			d, ok := l.Duration(v, p)
			if ok && d > secrets.MaxVaultCacheTTL {
				l.Errorf(v, p, "must be at most %s, which bounds how long a rotated secret goes unused, got %s", secrets.MaxVaultCacheTTL, v.Value)
				return
			}
			if ok {
				vc.CacheTTL = d
			}
		}
	})
	hasToken, hasAppRole := vc.Token.String() != "", vc.AppRoleID != "" || vc.AppRoleSecretID.String() != ""
	switch {
	case vc.Address == "":
		if address == nil { // else reported where it is written
			l.Errorf(n, path, "needs an address")
		}
	case hasToken == hasAppRole:
		l.Errorf(n, path, "needs exactly one of token and approle")
	case hasAppRole && (vc.AppRoleID == "" || vc.AppRoleSecretID.String() == ""):
		l.Errorf(n, path+".approle", "needs role_id and secret_id")
	}
}

// noVaultRef refuses a Vault credential kept in Vault.
func (l *loader) noVaultRef(n *yaml.Node, path string, t Template) {
	for _, ref := range t.Refs() {
		if ref.Scheme == "vault" {
			l.Errorf(n, path, "Vault's own credentials cannot come from Vault; use env: or file:")
		}
	}
}

func (l *loader) approvals(n *yaml.Node, path string, cfg *Config) {
	var secret *yaml.Node
	// A webhook is written, even one refused: its secret is then not
	// reported as one without a webhook.
	var hooked bool
	l.Fields(n, path, approvalKeys, func(key string, _, v *yaml.Node) {
		p := path + "." + key
		switch key {
		case "webhook_secret":
			t, ok := l.credential(v, p, "${env:AMG_WEBHOOK_SECRET}")
			if !ok || t.String() == "" {
				return
			}
			if len(t.Refs()) == 0 {
				return // refused as written in the file
			}
			secret, cfg.ApprovalWebhookSecret = v, t
		case "ttl":
			if d, ok := l.Duration(v, p); ok {
				cfg.ApprovalTTL = d
			}
		case "max_pending_per_agent":
			if n, ok := l.Integer(v, p, 1); ok {
				cfg.MaxPendingApprovalsPerAgent = n
			}
		case "webhook":
			t, ok := l.template(v, p)
			hooked = !ok || t.String() != ""
			if !ok || t.String() == "" {
				return
			}
			// A credential is a secret reference's to give, whatever else
			// the URL takes from one.
			if literalUserinfo(t) {
				l.Errorf(v, p, "must not contain a credential (user:password@) written in the config file: "+
					"take it from a secret reference, such as \"https://amg:${env:HOOK_PASSWORD}@hooks.example/amg\"")
				return
			}
			// A URL whose every part is written here is checked now; one
			// with secret references, once they are resolved (see
			// CheckSecrets).
			if len(t.Refs()) == 0 {
				if err := checkWebhook(t.String()); err != nil {
					l.Errorf(v, p, "%v", err)
					return
				}
			}
			cfg.ApprovalWebhook = t
		}
	})
	if secret != nil && !hooked {
		l.Errorf(secret, path+".webhook_secret", "signs what approvals.webhook is sent, and no webhook is set")
	}
}

// literalUserinfo reports whether t, a URL, has a user:password@ whose
// password no secret reference is part of, or a user alone, which some
// services take a token as, that none is part of: a credential written
// in the file. Each reference stands in as one letter and then as
// another; what reads the same both times is all literal. The userinfo
// is cut from the text, not parsed from a URL, which a stand-in in the
// port would make invalid.
func literalUserinfo(t Template) bool {
	userinfo := func(stand string) (user, password string, hasPassword, ok bool) {
		var b strings.Builder
		for _, pt := range t.parts {
			if pt.ref.Scheme == "" {
				b.WriteString(pt.lit)
			} else {
				b.WriteString(stand)
			}
		}
		_, authority, found := strings.Cut(b.String(), "://")
		if !found {
			return "", "", false, false
		}
		if i := strings.IndexAny(authority, "/?#"); i >= 0 {
			authority = authority[:i]
		}
		at := strings.LastIndexByte(authority, '@')
		if at < 0 {
			return "", "", false, false
		}
		user, password, hasPassword = strings.Cut(authority[:at], ":")
		return user, password, hasPassword, true
	}
	ua, pa, hasPassword, okA := userinfo("a")
	ub, pb, _, okB := userinfo("b")
	switch {
	case !okA || !okB:
		return false
	case hasPassword:
		return pa == pb
	}
	return ua == ub
}

func (l *loader) audit(n *yaml.Node, path string, a *Audit) {
	var interval *yaml.Node
	l.Fields(n, path, auditKeys, func(key string, _, v *yaml.Node) {
		p := path + "." + key
		switch key {
		case "max_file_bytes":
			if n, ok := l.Integer(v, p, 4096); ok {
				a.MaxFileBytes = int64(n)
			}
		case "sync":
			s, ok := l.Str(v, p)
			if ok && a.Sync.UnmarshalText([]byte(s)) != nil {
				l.Errorf(v, p, "must be always, interval or never, got %q", s)
			}
		case "sync_interval":
			if d, ok := l.Duration(v, p); ok {
				a.SyncInterval, interval = d, v
			}
		case "stdout":
			if b, ok := l.Boolean(v, p); ok {
				a.Stdout = b
			}
		case "stream_max_records":
			if n, ok := l.Integer(v, p, 1); ok {
				a.StreamMaxRecords = int64(n)
			}
		}
	})
	if interval != nil && a.Sync != audit.SyncOnInterval {
		l.Errorf(interval, path+".sync_interval", "applies only to sync: interval, not %s", a.Sync)
	}
}

func (l *loader) console(n *yaml.Node, path string, c *Console) {
	l.Fields(n, path, consoleKeys, func(key string, _, v *yaml.Node) {
		p := path + "." + key
		switch key {
		case "ready_days":
			d, ok := l.Integer(v, p, 1)
			if ok && d > shadow.MaxDays {
				l.Errorf(v, p, "must be at most %d, the days of shadow counts the console shows, got %d", shadow.MaxDays, d)
				return
			}
			if ok {
				c.ReadyDays = d
			}
		case "ready_min_calls":
			if n, ok := l.Integer(v, p, 1); ok {
				c.ReadyMinCalls = n
			}
		case "trace_url":
			s, ok := l.Str(v, p)
			if !ok || s == "" {
				return
			}
			u := strings.ReplaceAll(s, "{trace_id}", "0")
			if !isHTTPURL(u) || !strings.Contains(s, "{trace_id}") {
				l.Errorf(v, p, "must be an http(s) URL containing {trace_id}, got %q", s)
				return
			}
			pu, _ := url.Parse(u)
			if err := checkPort(pu); err != nil {
				l.Errorf(v, p, "%v", err)
				return
			}
			c.TraceURL = s
		case "staged_policy_dir":
			l.dir(v, p, &c.StagedPolicyDir)
		}
	})
}

// origins reads allowed_origins: web origins, each as a browser sends it
// in an Origin header. Anything else could never match one, or would
// match more than the operator meant to allow.
func (l *loader) origins(n *yaml.Node, path string) []string {
	list := []string{}
	seen := map[string]*yaml.Node{} // serialised origin -> its node
	l.List(n, path, func(_ int, p string, v *yaml.Node) {
		s, ok := l.Str(v, p)
		if !ok {
			return
		}
		if s == "*" || s == "null" {
			l.Errorf(v, p, "must be an origin, scheme://host[:port], such as https://app.example.com: %q would allow pages the operator never named; list each origin", s)
			return
		}
		parsed, err := hostguard.ParseOrigin(s)
		if err != nil {
			l.Errorf(v, p, "%q is not an origin as browsers send it (scheme://host[:port]): %v", s, err)
			return
		}
		o := parsed.String()
		if prev, dup := seen[o]; dup {
			l.Errorf(v, p, "%s is the same origin as %s at line %d", s, prev.Value, prev.Line)
			return
		}
		seen[o] = v
		list = append(list, s)
	})
	return list
}

// isHTTPURL reports whether s is an absolute http or https URL with a
// host. A port alone is no host: the HTTP client would dial this machine.
func isHTTPURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "https" || u.Scheme == "http") && u.Hostname() != ""
}

// checkWebhook returns what is wrong with s as the approval webhook's URL.
// Not the URL: a webhook's secret is often in its path or query.
func checkWebhook(s string) error {
	if !isHTTPURL(s) {
		return errors.New("must be an http(s) URL with a host")
	}
	u, _ := url.Parse(s)
	return checkPort(u)
}

// WebhookKey returns the HMAC key of secret, the approval webhook's
// signing secret, which is written as the Standard Webhooks
// specification writes one: "whsec_" and the standard base64 of 24 to 64
// bytes. Its errors do not quote secret.
func WebhookKey(secret string) ([]byte, error) {
	const prefix, minLen, maxLen = "whsec_", 24, 64
	const want = "must be \"whsec_\" and the base64 of 24 to 64 random bytes, such as the output of: echo whsec_$(openssl rand -base64 32)"
	enc, ok := strings.CutPrefix(secret, prefix)
	if !ok {
		return nil, errors.New(want)
	}
	// The decoder skips line breaks; a secret is refused with them, as
	// with any other byte that is not base64.
	key, err := base64.StdEncoding.DecodeString(enc)
	if err != nil || strings.ContainsAny(enc, "\r\n") || len(key) < minLen || len(key) > maxLen {
		return nil, errors.New(want)
	}
	return key, nil
}

func (l *loader) dir(n *yaml.Node, path string, dst *string) {
	s, ok := l.Str(n, path)
	switch {
	case !ok:
	case s == "":
		l.Errorf(n, path, "must not be empty")
	default:
		*dst = s
	}
}
