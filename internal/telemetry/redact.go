package telemetry

import (
	"context"
	"slices"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/amgateway/amg/mcpfilter"
)

// Redacted replaces, in exported spans, the value of every URL query
// parameter, every query segment without a value, and the path of every
// upstream URL.
const Redacted = mcpfilter.Redacted

// How each span attribute that may hold a URL or part of one is redacted.
// otelhttp's client spans record url.full whole, and an upstream URL may
// carry a credential in its query or its path (some hosted MCP servers put
// the key there); the config refuses user:password@, but cannot tell a
// secret parameter or path segment from another. The agent-facing
// server's own path (/mcp) is no secret; its query may hold the agent's.
// The older conventions' names are covered too.
var urlKeys = map[attribute.Key]func(string) string{
	"url.full":    redactURL,
	"http.url":    redactURL,
	"url.query":   mcpfilter.RedactQuery,
	"http.target": redactTarget,
}

// redactingExporter passes spans on with their URL attributes redacted
// (urlKeys): the names of parameters with a value stay, so a trace still
// shows which parameters a call had, and the host says which upstream it
// went to.
type redactingExporter struct{ sdktrace.SpanExporter }

func (e redactingExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	out := spans
	for i, s := range spans {
		attrs, changed := redactURLs(s.Attributes())
		if !changed {
			continue
		}
		if &out[0] == &spans[0] { // copy on the first change: spans is the SDK's
			out = slices.Clone(spans)
		}
		out[i] = redactedSpan{ReadOnlySpan: s, attrs: attrs}
	}
	return e.SpanExporter.ExportSpans(ctx, out)
}

// redactedSpan is a span with other attributes.
type redactedSpan struct {
	sdktrace.ReadOnlySpan
	attrs []attribute.KeyValue
}

func (s redactedSpan) Attributes() []attribute.KeyValue { return s.attrs }

// redactURLs returns attrs with their URL attributes redacted, and
// whether any changed; attrs itself is not modified.
func redactURLs(attrs []attribute.KeyValue) ([]attribute.KeyValue, bool) {
	var out []attribute.KeyValue
	for i, kv := range attrs {
		redact := urlKeys[kv.Key]
		if redact == nil || kv.Value.Type() != attribute.STRING {
			continue
		}
		v := kv.Value.AsString()
		r := redact(v)
		if r == v {
			continue
		}
		if out == nil {
			out = slices.Clone(attrs)
		}
		out[i] = attribute.String(string(kv.Key), r)
	}
	if out == nil {
		return attrs, false
	}
	return out, true
}

// redactURL keeps an absolute URL's scheme and host; a path other than
// "/" becomes /REDACTED, and the query is redacted by
// mcpfilter.RedactQuery. What does not parse as scheme://host is redacted
// whole. A fragment, which clients do not send, is dropped.
func redactURL(u string) string {
	u, _, _ = strings.Cut(u, "#")
	u, query, hasQuery := strings.Cut(u, "?")
	scheme, rest, ok := strings.Cut(u, "://")
	host, path, hasPath := strings.Cut(rest, "/")
	if !ok || scheme == "" || host == "" {
		return Redacted
	}
	out := scheme + "://" + host
	switch {
	case path != "":
		out += "/" + Redacted
	case hasPath:
		out += "/"
	}
	if hasQuery {
		out += "?" + mcpfilter.RedactQuery(query)
	}
	return out
}

// redactTarget redacts the query of a request target (path and query) as
// mcpfilter.RedactQuery does, keeping the path.
func redactTarget(target string) string {
	target, _, _ = strings.Cut(target, "#")
	path, query, ok := strings.Cut(target, "?")
	if !ok {
		return path
	}
	return path + "?" + mcpfilter.RedactQuery(query)
}
