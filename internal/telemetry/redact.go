package telemetry

import (
	"context"
	"slices"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// Redacted replaces the value of every URL query parameter in exported
// spans.
const Redacted = "REDACTED"

// urlKeys are the span attributes that may hold a URL with its query:
// otelhttp's client spans record url.full whole, and an upstream URL may
// carry a credential in its query (the config refuses user:password@, but
// cannot tell a secret parameter from another). The older conventions'
// names are covered too.
var urlKeys = map[attribute.Key]bool{"url.full": true, "http.url": true, "url.query": true, "http.target": true}

// redactingExporter passes spans on with the value of every query
// parameter in their URL attributes replaced by Redacted; names stay, so a
// trace still shows which parameters a call had.
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

// redactURLs returns attrs with the query values of their URL attributes
// redacted, and whether any changed; attrs itself is not modified.
func redactURLs(attrs []attribute.KeyValue) ([]attribute.KeyValue, bool) {
	var out []attribute.KeyValue
	for i, kv := range attrs {
		if !urlKeys[kv.Key] || kv.Value.Type() != attribute.STRING {
			continue
		}
		v := kv.Value.AsString()
		r := redactQuery(v, kv.Key == "url.query")
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

// redactQuery replaces the value of each parameter in u's query (all of u
// when whole is set, as url.query holds the query alone). A fragment,
// which clients do not send, is dropped.
func redactQuery(u string, whole bool) string {
	prefix, query := "", u
	if !whole {
		var ok bool
		if prefix, query, ok = strings.Cut(u, "?"); !ok {
			return u
		}
		prefix += "?"
	}
	query, _, _ = strings.Cut(query, "#")
	params := strings.Split(query, "&")
	for i, p := range params {
		if name, _, ok := strings.Cut(p, "="); ok {
			params[i] = name + "=" + Redacted
		}
	}
	return prefix + strings.Join(params, "&")
}
