package mcpfilter

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// toolsCall2KB is a realistic tools/call: an issue with a markdown body,
// labels, nested options and a few escapes, as an agent would send it.
var toolsCall2KB = []byte(`{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"_meta":{"progressToken":"tok-42","io.modelcontextprotocol/protocolVersion":"2026-07-28"},"name":"github__create_issue","arguments":{"owner":"amgateway","repo":"amg","title":"Gateway rejects tools/call bodies with duplicate keys in nested arguments","body":"## Summary\n\nWhen an agent sends a ` + "`tools/call`" + ` whose arguments contain the same key twice at any depth, the gateway must reject the request instead of forwarding it.\n\n## Steps to reproduce\n\n1. Start ` + "`amg serve`" + ` with the example policies.\n2. Send {\"limit\":1,\"limit\":1000} as arguments.\n3. Observe the decision log.\n\n## Expected\n\nA JSON-RPC error -32600 with reason ` + "`duplicate_key`" + ` and the offset of the second key.\n\n## Actual\n\nThe request is denied, but the audit record lacks the JSON path.\n\n## Environment\n\n- amg v0.3.1 (linux/amd64)\n- Envoy 1.31 with ext_authz, pack_as_bytes: true\n- Client: caf\u00e9-agent 2.4 \u2014 streamable HTTP\n\nThanks! \ud83d\ude80","labels":["bug","security","parser","triage/needs-owner"],"assignees":["alice","bob"],"milestone":7,"project":{"id":"PVT_kwDOBa1b2c4AAmZx","column":"Backlog","position":{"after":"item_991","before":null}},"metadata":{"severity":"high","score":7.5,"cwe":[20,436],"affected":[{"component":"mcpfilter","versions":[">=0.2.0","<0.3.2"]},{"component":"authz","versions":[">=0.1.0"]}],"reported_by":{"name":"Security Team","email":"security@example.com","verified":true}},"notify":{"channels":["#amg-dev","#security"],"mention":["@oncall"],"quiet_hours":false},"checklist":["reproduce on main","add a regression seed to testdata/fuzz","document the reason in the audit schema","backport to 0.3.x"],"links":[{"rel":"spec","href":"https://modelcontextprotocol.io/specification/2025-11-25/basic"},{"rel":"rfc","href":"https://www.rfc-editor.org/rfc/rfc8259#section-4"}],"estimate_hours":12.5,"due":"2026-09-30T17:00:00Z","owner_team":"gateway-core","sla":{"respond_within_hours":24,"resolve_within_days":14},"dry_run":false,"idempotency_key":"6f1c0d2e-3b7a-4d5e-9c8b-1a2b3c4d5e6f"}}}`)

var toolsCallSmall = []byte(`{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"notion__get_pages","arguments":{"workspace_id":"ws_abc123","limit":100}}}`)

func BenchmarkParseToolsCall2KB(b *testing.B) {
	benchParse(b, toolsCall2KB)
}

func BenchmarkParseToolsCallSmall(b *testing.B) {
	benchParse(b, toolsCallSmall)
}

// BenchmarkParseToolsCall2KBSkipArgs is the broker's parse: the envelope,
// with the arguments validated but not built.
func BenchmarkParseToolsCall2KBSkipArgs(b *testing.B) {
	benchParseOpts(b, toolsCall2KB, &Options{SkipArgs: true})
}

func benchParse(b *testing.B, body []byte) { benchParseOpts(b, body, nil) }

func benchParseOpts(b *testing.B, body []byte, opts *Options) {
	if _, err := Parse(body, opts); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(body, opts); err != nil {
			b.Fatal(err)
		}
	}
}

// stdlibMessage is what an upstream using encoding/json and the go-sdk's
// types decodes a tools/call into.
type stdlibMessage struct {
	JSONRPC string             `json:"jsonrpc"`
	ID      any                `json:"id"`
	Method  string             `json:"method"`
	Params  mcp.CallToolParams `json:"params"`
}

// BenchmarkStdlibUnmarshal2KB is the baseline: encoding/json decoding the
// same body into mcp.CallToolParams, without any of the checks.
func BenchmarkStdlibUnmarshal2KB(b *testing.B) {
	benchStdlib(b, toolsCall2KB)
}

func BenchmarkStdlibUnmarshalSmall(b *testing.B) {
	benchStdlib(b, toolsCallSmall)
}

func benchStdlib(b *testing.B, body []byte) {
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		var m stdlibMessage
		if err := json.Unmarshal(body, &m); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkKeyCheck measures the duplicate-key check on objects around
// bigObject keys, where it switches from a linear scan to a map; it is how
// bigObject was chosen. The values live outside arguments so that only the
// check and the scan are measured.
func BenchmarkKeyCheck(b *testing.B) {
	for _, n := range []int{4, 16, 32, 63, 64, 128, 256, 1024} {
		body := []byte(`{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"x":` + benchObject(n) + `}}`)
		b.Run("keys="+strconv.Itoa(n), func(b *testing.B) {
			benchParse(b, body)
		})
	}
}

// benchObject has realistic keys: similar prefixes and lengths.
func benchObject(n int) string {
	var s strings.Builder
	s.WriteByte('{')
	for i := range n {
		if i > 0 {
			s.WriteByte(',')
		}
		s.WriteString(`"field_name_` + strconv.Itoa(i) + `":0`)
	}
	s.WriteByte('}')
	return s.String()
}
