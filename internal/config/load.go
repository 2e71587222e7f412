package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/amgateway/amg/mcpfilter"
)

// loader walks the YAML node tree, so that every problem has a position,
// and keeps going after each one.
type loader struct {
	file     string
	problems Problems
}

func (l *loader) pos(n *yaml.Node) Pos { return Pos{File: l.file, Line: n.Line, Col: n.Column} }

func (l *loader) errorf(n *yaml.Node, path, format string, args ...any) {
	p := Pos{File: l.file}
	if n != nil {
		p = l.pos(n)
	}
	l.problems = append(l.problems, Problem{Pos: p, Path: path, Msg: fmt.Sprintf(format, args...)})
}

var configKeys = []string{"listen", "admin_listen", "authz_listen", "data_dir", "policy_dir", "max_body_bytes", "unprefixed_names", "upstreams"}

func (l *loader) config(cfg *Config, data []byte) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if !errors.Is(err, io.EOF) { // EOF: an empty file, all defaults
			l.yamlError(err)
		}
		return
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case errors.Is(err, io.EOF):
	case err != nil:
		l.yamlError(err)
	default:
		// Silently ignoring a second document would ignore half the file.
		l.errorf(&extra, "", "a config file holds one YAML document; this is a second one")
	}
	if len(doc.Content) == 0 {
		return
	}
	root := doc.Content[0]
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return
	}
	var unprefixed *yaml.Node
	l.fields(root, "", configKeys, func(key string, _, v *yaml.Node) {
		switch key {
		case "listen":
			l.addr(v, key, &cfg.Listen)
		case "admin_listen":
			l.addr(v, key, &cfg.AdminListen)
		case "authz_listen":
			l.addr(v, key, &cfg.AuthzListen)
		case "data_dir":
			l.dir(v, key, &cfg.DataDir)
		case "policy_dir":
			l.dir(v, key, &cfg.PolicyDir)
		case "max_body_bytes":
			if n, ok := l.integer(v, key, 1); ok {
				cfg.MaxBodyBytes = n
			}
		case "unprefixed_names":
			if b, ok := l.boolean(v, key); ok {
				cfg.UnprefixedNames, unprefixed = b, v
			}
		case "upstreams":
			cfg.Upstreams = l.upstreams(v, key)
		}
	})
	if cfg.UnprefixedNames && len(cfg.Upstreams) != 1 {
		l.errorf(unprefixed, "unprefixed_names", "needs exactly one upstream (there are %d): with several, names must say which server they belong to", len(cfg.Upstreams))
	}
}

func (l *loader) upstreams(n *yaml.Node, path string) map[string]*Upstream {
	ups := map[string]*Upstream{}
	if n.Kind == yaml.MappingNode && len(n.Content) == 0 {
		l.errorf(n, path, "must declare at least one upstream; leave upstreams out to use the built-in demo")
		return ups
	}
	l.fields(n, path, nil, func(name string, k, v *yaml.Node) {
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
		l.errorf(k, path, "invalid upstream name: %v", nameErr)
	}
	u := &Upstream{
		Name:           name,
		ConnectTimeout: DefaultConnectTimeout,
		CallTimeout:    DefaultCallTimeout,
		Pos:            l.pos(k),
	}
	var kinds []string                  // url, command, builtin, in file order
	keyNodes := map[string]*yaml.Node{} // every key set, for problems about it
	var urlNode *yaml.Node
	l.fields(v, path, upstreamKeys, func(key string, k, v *yaml.Node) {
		p := path + "." + key
		keyNodes[key] = k
		switch key {
		case "url":
			kinds = append(kinds, key)
			if s, ok := l.str(v, p); ok {
				u.URL, urlNode = s, v
			}
		case "command":
			kinds = append(kinds, key)
			u.Command = l.command(v, p)
		case "builtin":
			kinds = append(kinds, key)
			if s, ok := l.str(v, p); ok {
				if !slices.Contains(builtins, s) {
					l.errorf(v, p, "unknown builtin %q (expected one of: %s)", s, strings.Join(builtins, ", "))
				}
				u.Builtin = s
			}
		case "env":
			u.Env = l.env(v, p)
		case "headers":
			u.Headers = l.headers(v, p)
		case "timeouts":
			l.fields(v, p, timeoutKeys, func(key string, _, v *yaml.Node) {
				d, ok := l.duration(v, p+"."+key)
				switch {
				case !ok:
				case key == "connect":
					u.ConnectTimeout = d
				case key == "call":
					u.CallTimeout = d
				}
			})
		case "allow_insecure":
			u.AllowInsecure, _ = l.boolean(v, p)
		}
	})
	if v.Kind != yaml.MappingNode {
		return nil
	}
	switch len(kinds) {
	case 0:
		l.errorf(k, path, "must set exactly one of url, command or builtin")
	case 1:
		// Keys that belong to another kind are mistakes, not no-ops: a
		// header on a stdio server would silently never be sent.
		only := map[string]string{"headers": "url", "allow_insecure": "url", "env": "command"}
		for _, key := range upstreamKeys {
			if kind, ok := only[key]; ok && kind != kinds[0] && keyNodes[key] != nil {
				l.errorf(keyNodes[key], path+"."+key, "%s applies only to %s upstreams, and this one has %s", key, kind, kinds[0])
			}
		}
		if urlNode != nil {
			l.checkURL(urlNode, path+".url", u)
		}
	default:
		l.errorf(keyNodes[kinds[1]], path+"."+kinds[1], "%s and %s are both set; set exactly one of url, command or builtin",
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
		l.errorf(n, path, "invalid URL: %v", err)
		return
	}
	switch {
	case pu.Scheme == "":
		l.errorf(n, path, "must be an absolute URL starting with https:// or http://")
	case pu.Scheme != "http" && pu.Scheme != "https":
		l.errorf(n, path, "scheme must be http or https, got %q", pu.Scheme)
	case pu.Hostname() == "":
		l.errorf(n, path, "has no host")
	case pu.User != nil:
		l.errorf(n, path, "must not contain credentials (user:password@); send them in headers with a secret reference")
	case pu.Fragment != "" || strings.HasSuffix(u.URL, "#"):
		l.errorf(n, path, "must not have a fragment (#...)")
	case pu.Scheme == "http" && !u.AllowInsecure && !loopback(pu.Hostname()):
		l.errorf(n, path, "plain http is allowed only to loopback hosts (localhost, 127.0.0.0/8, ::1): use https, or set allow_insecure: true to send this upstream's traffic and credentials unencrypted")
	}
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
		l.errorf(n, path, `must be a list such as ["npx", "-y", "server"], got %s`, describe(n))
		return nil
	}
	if len(n.Content) == 0 {
		l.errorf(n, path, "must not be empty: the first element is the program to run")
		return nil
	}
	args := make([]string, 0, len(n.Content))
	for i, v := range n.Content {
		p := fmt.Sprintf("%s[%d]", path, i)
		s, ok := l.str(v, p)
		switch {
		case !ok:
		case i == 0 && s == "":
			l.errorf(v, p, "program must not be empty")
		case strings.IndexByte(s, 0) >= 0:
			l.errorf(v, p, "contains a NUL byte")
		}
		args = append(args, s)
	}
	return args
}

func (l *loader) env(n *yaml.Node, path string) map[string]Template {
	env := map[string]Template{}
	l.fields(n, path, nil, func(name string, k, v *yaml.Node) {
		p := path + "." + name
		if !envName.MatchString(name) {
			l.errorf(k, p, "invalid environment variable name %q (expected A-Z, a-z, 0-9 and '_', not starting with a digit)", name)
			return
		}
		t, ok := l.template(v, p)
		if !ok {
			return
		}
		for _, pt := range t.parts {
			if strings.IndexByte(pt.lit, 0) >= 0 {
				l.errorf(v, p, "contains a NUL byte")
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
	l.fields(n, path, nil, func(name string, k, v *yaml.Node) {
		p := path + "." + name
		if msg := checkHeaderName(name); msg != "" {
			l.errorf(k, p, "%s", msg)
			return
		}
		lower := strings.ToLower(name)
		if prev, dup := seen[lower]; dup {
			l.errorf(k, p, "duplicate header: same as %s at line %d (header names are case-insensitive)", prev.Value, prev.Line)
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
				l.errorf(v, p, "value contains a line break or other control character")
				bad = true
				break
			}
		}
		if !bad && slices.Contains(credentialHeaders, lower) && len(t.Refs()) == 0 {
			l.errorf(v, p, `%s carries a credential: take it from a secret reference such as "Bearer ${env:TOKEN}" rather than writing it in the config file`, name)
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
	s, ok := l.str(n, path)
	if !ok {
		return Template{}, false
	}
	t, errs := parseTemplate(s)
	for _, err := range errs {
		l.errorf(n, path, "%v", err)
	}
	t.pos = l.pos(n)
	return t, len(errs) == 0
}

func (l *loader) addr(n *yaml.Node, path string, dst *string) {
	s, ok := l.str(n, path)
	if !ok {
		return
	}
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		var ae *net.AddrError
		if errors.As(err, &ae) {
			err = errors.New(ae.Err)
		}
		l.errorf(n, path, "must be host:port such as 127.0.0.1:8080, got %q: %v", s, err)
		return
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		l.errorf(n, path, "port must be a number from 0 to 65535, got %q", port)
		return
	}
	*dst = s
}

func (l *loader) dir(n *yaml.Node, path string, dst *string) {
	s, ok := l.str(n, path)
	switch {
	case !ok:
	case s == "":
		l.errorf(n, path, "must not be empty")
	default:
		*dst = s
	}
}

// fields walks a mapping node whose keys must be among allowed (nil allows
// any key), reporting non-mappings, duplicate and unknown keys, and calls
// fn for every other key in file order.
func (l *loader) fields(n *yaml.Node, path string, allowed []string, fn func(key string, k, v *yaml.Node)) {
	if n.Kind != yaml.MappingNode {
		l.errorf(n, path, "must be a mapping, got %s", describe(n))
		return
	}
	seen := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			l.errorf(k, path, "keys must be scalars, got %s", describe(k))
			continue
		}
		p := join(path, k.Value)
		if prev, dup := seen[k.Value]; dup {
			l.errorf(k, p, "duplicate key (first at line %d)", prev.Line)
			continue
		}
		seen[k.Value] = k
		if allowed != nil && !slices.Contains(allowed, k.Value) {
			l.errorf(k, p, "unknown field %q (expected one of: %s)", k.Value, strings.Join(allowed, ", "))
			continue
		}
		fn(k.Value, k, v)
	}
}

func (l *loader) str(n *yaml.Node, path string) (string, bool) {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!str" {
		l.errorf(n, path, "must be a string, got %s", describe(n))
		return "", false
	}
	return n.Value, true
}

func (l *loader) integer(n *yaml.Node, path string, min int) (int, bool) {
	var v int
	if n.Kind != yaml.ScalarNode || n.Tag != "!!int" || n.Decode(&v) != nil {
		l.errorf(n, path, "must be an integer, got %s", describe(n))
		return 0, false
	}
	if v < min {
		l.errorf(n, path, "must be at least %d, got %d", min, v)
		return 0, false
	}
	return v, true
}

func (l *loader) boolean(n *yaml.Node, path string) (bool, bool) {
	var v bool
	if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" || n.Decode(&v) != nil {
		l.errorf(n, path, "must be true or false, got %s", describe(n))
		return false, false
	}
	return v, true
}

func (l *loader) duration(n *yaml.Node, path string) (time.Duration, bool) {
	s, ok := l.str(n, path)
	if !ok {
		return 0, false
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		l.errorf(n, path, "must be a positive duration such as 5s, 1m or 1h30m, got %q", s)
		return 0, false
	}
	return d, true
}

// yamlError turns a YAML syntax error into a problem at the line it names.
func (l *loader) yamlError(err error) {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	p := Pos{File: l.file}
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		p.Line, _ = strconv.Atoi(m[1])
		p.Col = 1
		msg = strings.TrimPrefix(msg, m[0])
	}
	l.problems = append(l.problems, Problem{Pos: p, Msg: "invalid YAML: " + msg})
}

var yamlLine = regexp.MustCompile(`^line (\d+): `)

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	}
	switch n.Tag {
	case "!!str":
		return "a string"
	case "!!int", "!!float":
		return "a number"
	case "!!bool":
		return "a boolean"
	case "!!null":
		return "null"
	}
	return "a " + strings.TrimPrefix(n.Tag, "!!")
}
