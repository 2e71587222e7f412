package authz

import (
	"strings"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
)

// headers reads request headers as Envoy sends them: lower-case names,
// either in the headers map (repeated headers joined with ",") or, with
// encode_raw_headers, in header_map. A header repeated in header_map is
// joined the same way, so a second Authorization header can never be
// mistaken for the first.
type headers struct {
	m map[string]string
}

func newHeaders(r *authv3.AttributeContext_HttpRequest) headers {
	if hm := r.GetHeaderMap(); hm != nil && len(hm.GetHeaders()) > 0 {
		m := make(map[string]string, len(hm.GetHeaders()))
		for _, hv := range hm.GetHeaders() {
			k := strings.ToLower(hv.GetKey())
			v := hv.GetValue()
			if len(hv.GetRawValue()) > 0 {
				v = string(hv.GetRawValue())
			}
			if prev, ok := m[k]; ok {
				v = prev + "," + v
			}
			m[k] = v
		}
		return headers{m: m}
	}
	return headers{m: r.GetHeaders()}
}

func (h headers) get(name string) string { return h.m[name] }

func (h headers) lookup(name string) (string, bool) {
	v, ok := h.m[name]
	return v, ok
}

// amgHeaders lists the x-amg-* headers the agent sent, to be removed.
func (h headers) amgHeaders() []string {
	var out []string
	for k := range h.m {
		if strings.HasPrefix(k, headerPrefix) {
			out = append(out, k)
		}
	}
	return out
}
