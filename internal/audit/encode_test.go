package audit

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// appendJSON must write what json.Marshal writes, so the chain format does
// not depend on which of the two produced a line.
func TestAppendJSONMatchesMarshal(t *testing.T) {
	tricky := "a\"b\\c\n\r\t\b\f\x00\x1f<script>&amp;\u2028\u2029 caf\u00e9 \U0001F680 \xff\xfe end"
	recs := []Record{
		{},
		{Time: time.Date(2026, 11, 25, 12, 0, 0, 123456789, time.UTC), DecisionID: "d1", Verdict: "allow", Code: "allowed"},
		{Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.FixedZone("x", 3600)), DecisionID: tricky, Agent: tricky, Role: "r", TokenID: "0123456789abcdef",
			Server: "s", Tool: "t", Method: "tools/call", Args: json.RawMessage(`{"a":[1,2.5e3,"x\u00e9"],"b":{"c":null}}`),
			PolicyVersion: "3-abc", Verdict: "deny", ShadowVerdict: "deny", Rule: "r/s/t", Code: "constraint_failed",
			Reason: tricky, LatencyMicros: -5, UpstreamStatus: "ok", UpstreamMicros: 42, TraceID: "tr", ApprovalID: "ap",
			Seq: 18446744073709551615, Prev: "00ff", Hash: "abcd"},
	}
	for i, rec := range recs {
		want, err := json.Marshal(&rec)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(string(want), string(rec.appendJSON(nil))); diff != "" {
			t.Errorf("record %d (-marshal +appendJSON):\n%s", i, diff)
		}
	}
}

func BenchmarkAppendJSON(b *testing.B) {
	rec := Record{Time: time.Now(), DecisionID: "4f1c2a9e00004000800000000000001a", Agent: "bot-1", Role: "reader",
		Server: "notion", Tool: "get_pages", Method: "tools/call", Args: json.RawMessage(`{"workspace_id":"ws_abc123","limit":50}`),
		PolicyVersion: "1-f93ed85599f6", Verdict: "allow", Code: "allowed", Rule: "reader/notion/get_pages", LatencyMicros: 12}
	buf := make([]byte, 0, 1024)
	b.ReportAllocs()
	for b.Loop() {
		buf = rec.appendJSON(buf[:0])
	}
}
