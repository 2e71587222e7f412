package mcpfilter

import "unsafe"

// paramSpec says what the gateway extracts from the params of one method.
type paramSpec struct {
	method string
	// fields are the params members that the gateway or an upstream SDK
	// reads into struct fields. A key that matches one only under case
	// folding is rejected: encoding/json would read it as that field while
	// the gateway would not.
	fields     []string
	name       bool // params.name is a required string
	arguments  bool // params.arguments is an optional object
	promptArgs bool // ...whose members are all strings
	uri        bool // params.uri is a required string
	ref        bool // params.ref is a required completion reference
}

// The field lists follow the go-sdk's *Params structs for each method.
var (
	toolsCallSpec = &paramSpec{
		method:    "tools/call",
		fields:    []string{"name", "arguments", "_meta", "inputResponses", "requestState"},
		name:      true,
		arguments: true,
	}
	promptsGetSpec = &paramSpec{
		method:     "prompts/get",
		fields:     []string{"name", "arguments", "_meta", "inputResponses", "requestState"},
		name:       true,
		arguments:  true,
		promptArgs: true,
	}
	resourcesReadSpec = &paramSpec{
		method: "resources/read",
		fields: []string{"uri", "_meta", "inputResponses", "requestState"},
		uri:    true,
	}
	resourcesSubscribeSpec = &paramSpec{
		method: "resources/subscribe",
		fields: []string{"uri", "_meta"},
		uri:    true,
	}
	resourcesUnsubscribeSpec = &paramSpec{
		method: "resources/unsubscribe",
		fields: []string{"uri", "_meta"},
		uri:    true,
	}
	completionSpec = &paramSpec{
		method: "completion/complete",
		fields: []string{"ref", "argument", "context", "_meta"},
		ref:    true,
	}
	// Other methods: only the protocol version in _meta matters here; the
	// caller denies methods it does not know.
	otherSpec = &paramSpec{fields: []string{"_meta"}}
)

func specFor(method string) *paramSpec {
	switch method {
	case "tools/call":
		return toolsCallSpec
	case "prompts/get":
		return promptsGetSpec
	case "resources/read":
		return resourcesReadSpec
	case "resources/subscribe":
		return resourcesSubscribeSpec
	case "resources/unsubscribe":
		return resourcesUnsubscribeSpec
	case "completion/complete":
		return completionSpec
	}
	return otherSpec
}

const (
	foundName = 1 << iota
	foundURI
	foundRef
)

// params parses the params object at p.pos, at the given depth, into m and
// reports which required members it found.
func (p *parser) params(depth int, m *Message, spec *paramSpec) (found int, err error) {
	ks, err := p.beginObject(depth)
	if err != nil {
		return 0, err
	}
	for {
		k, ok, err := p.nextKey(&ks)
		if !ok {
			return found, err
		}
		switch key := string(k.dec); {
		case key == "_meta":
			at := p.pos
			err = p.meta(depth, m)
			m.MetaSpan = Span{at, p.pos}
		case spec.name && key == "name":
			found |= foundName
			at := p.pos
			m.Name, err = p.stringMember(depth, ReasonInvalidName, "name must be a string")
			m.NameSpan = Span{at, p.pos}
		case spec.uri && key == "uri":
			found |= foundURI
			m.URI, err = p.stringMember(depth, ReasonInvalidURI, "uri must be a string")
		case spec.arguments && key == "arguments":
			err = p.arguments(depth, m, spec.promptArgs)
		case spec.ref && key == "ref":
			found |= foundRef
			err = p.ref(depth, m)
		default:
			if f := foldMatch(k.dec, spec.fields); f != "" && f != key {
				return 0, p.caseVariant(k, f)
			}
			err = p.value(depth)
		}
		if err != nil {
			return 0, withKey(err, k.dec)
		}
	}
}

// required rejects a message whose method needs members it lacks.
func (p *parser) required(m *Message, spec *paramSpec, found, start, paramsStart int) error {
	if !spec.name && !spec.uri && !spec.ref {
		return nil
	}
	if paramsStart < 0 {
		return p.errAt(ReasonInvalidParams, start, spec.method+" requires params")
	}
	switch {
	case spec.name && found&foundName == 0:
		return withKey(p.errAt(ReasonInvalidName, paramsStart, spec.method+" requires params.name"), []byte("params"))
	case spec.uri && found&foundURI == 0:
		return withKey(p.errAt(ReasonInvalidURI, paramsStart, spec.method+" requires params.uri"), []byte("params"))
	case spec.ref && found&foundRef == 0:
		return withKey(p.errAt(ReasonInvalidParams, paramsStart, spec.method+" requires params.ref"), []byte("params"))
	case spec.ref && !(m.RefType == RefPrompt && m.Name != "" || m.RefType == RefResource && m.URI != ""):
		return withKey(p.errAt(ReasonInvalidParams, paramsStart,
			"params.ref must be a ref/prompt with a name or a ref/resource with a uri"), []byte("params"))
	}
	return nil
}

// Completion reference types.
const (
	RefPrompt   = "ref/prompt"
	RefResource = "ref/resource"
)

var refFields = []string{"type", "name", "uri"}

// ref parses a completion reference: what the completion is about, which
// the gateway decides on like the prompt or resource it names.
func (p *parser) ref(depth int, m *Message) error {
	if p.pos >= len(p.data) || p.data[p.pos] != '{' {
		return p.wrongType(depth, ReasonInvalidParams, "ref must be an object")
	}
	depth++
	ks, err := p.beginObject(depth)
	if err != nil {
		return err
	}
	for {
		k, ok, err := p.nextKey(&ks)
		if !ok {
			return err
		}
		switch key := string(k.dec); key {
		case "type":
			m.RefType, err = p.stringMember(depth, ReasonInvalidParams, "ref.type must be a string")
		case "name":
			m.Name, err = p.stringMember(depth, ReasonInvalidName, "ref.name must be a string")
		case "uri":
			m.URI, err = p.stringMember(depth, ReasonInvalidURI, "ref.uri must be a string")
		default:
			if f := foldMatch(k.dec, refFields); f != "" {
				return p.caseVariant(k, f)
			}
			err = p.value(depth)
		}
		if err != nil {
			return withKey(err, k.dec)
		}
	}
}

func (p *parser) stringMember(depth int, r Reason, detail string) (string, error) {
	if p.pos >= len(p.data) || p.data[p.pos] != '"' {
		return "", p.wrongType(depth, r, detail)
	}
	start, end, esc, err := p.scanString()
	switch {
	case err != nil:
		return "", err
	case esc:
		// Decoded into a buffer of its own, which the string may keep.
		v := unescape(make([]byte, 0, end-start), p.data[start:end])
		return unsafe.String(unsafe.SliceData(v), len(v)), nil
	case p.immutable && end > start:
		return unsafe.String(&p.data[start], end-start), nil
	}
	return string(p.data[start:end]), nil
}

// progressTokenKey is the params._meta key of the token under which a
// request asks for progress notifications.
const progressTokenKey = "progressToken"

func (p *parser) meta(depth int, m *Message) error {
	if p.pos >= len(p.data) || p.data[p.pos] != '{' {
		return p.wrongType(depth, ReasonInvalidMeta, "_meta must be an object")
	}
	depth++
	ks, err := p.beginObject(depth)
	if err != nil {
		return err
	}
	for {
		k, ok, err := p.nextKey(&ks)
		if !ok {
			return err
		}
		switch {
		case string(k.dec) == MetaProtocolVersionKey:
			if p.pos >= len(p.data) || p.data[p.pos] != '"' {
				err = p.wrongType(depth, ReasonInvalidMeta, "protocol version must be a string")
				break
			}
			var v []byte
			if v, err = p.str(); err == nil {
				m.MetaProtocolVersion = internVersion(v)
			}
		case equalFold(k.dec, MetaProtocolVersionKey):
			return p.caseVariant(k, MetaProtocolVersionKey)
		case string(k.dec) == progressTokenKey:
			// Peers match progress to its request by comparing tokens;
			// only the protocol's strings and integers compare alike in
			// every decoder (an object or array cannot be compared at all).
			err = p.stringOrInteger(depth, ReasonInvalidMeta, progressTokenKey)
		case equalFold(k.dec, progressTokenKey):
			// A decoder into a struct would read it as the token.
			return p.caseVariant(k, progressTokenKey)
		default:
			err = p.value(depth)
		}
		if err != nil {
			return withKey(err, k.dec)
		}
	}
}

func internVersion(b []byte) string {
	switch string(b) {
	case "2026-07-28":
		return "2026-07-28"
	case "2025-11-25":
		return "2025-11-25"
	case "2025-06-18":
		return "2025-06-18"
	case "2025-03-26":
		return "2025-03-26"
	case "2024-11-05":
		return "2024-11-05"
	}
	return string(b)
}

func (p *parser) arguments(depth int, m *Message, prompt bool) error {
	start := p.pos
	if p.pos >= len(p.data) || p.data[p.pos] != '{' {
		if p.pos < len(p.data) && p.data[p.pos] == 'n' {
			// null is not "absent": decoders differ on whether it clears a
			// default, and MCP says arguments is an object.
			return p.wrongType(depth, ReasonInvalidArguments, "arguments must be an object, not null")
		}
		return p.wrongType(depth, ReasonInvalidArguments, "arguments must be an object")
	}
	if p.skipArgs {
		if err := p.skipObject(depth + 1); err != nil {
			return err
		}
		m.Arguments = p.data[start:p.pos]
		return nil
	}
	// One copy of the rest of the body serves every string of every
	// arguments object in it (positions only move forward, except for
	// params re-read within the same message).
	if p.argStr == "" || start < p.argBase {
		rest := p.data[start:]
		if p.immutable {
			p.argStr = unsafe.String(unsafe.SliceData(rest), len(rest))
		} else {
			p.argStr = string(rest)
		}
		p.argBase = start
	}
	at := len(p.tape)
	p.tape = append(p.tape, node{kind: Object})
	if err := p.buildObject(depth+1, at, prompt); err != nil {
		return err
	}
	// The tape is attached when the whole body is accepted (see Parse).
	m.Arguments, m.Args = p.data[start:p.pos], Value{i: int32(at)}
	return nil
}
