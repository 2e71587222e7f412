package gateway

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/amgateway/amg/authz/authztest"
	"github.com/amgateway/amg/internal/audit"
	"github.com/amgateway/amg/internal/syncbuf"
)

// The config's audit section reaches the devices: with stdout on, every
// decision is a JSON line on stdout as well as a chained record in the
// file, and a small max_file_bytes rotates the file while the chain holds
// across the rotated files.
func TestAuditSectionConfiguresTheDevices(t *testing.T) {
	cfg := loopbackConfig(t, "../../policies")
	cfg.Audit.Stdout, cfg.Audit.MaxFileBytes, cfg.Audit.Sync = true, 4096, audit.SyncAlways
	var stdout syncbuf.Buffer
	gw := serveForTest(t, cfg, &Options{Stdout: &stdout})
	token, _, err := gw.IssueToken(context.Background(), "auditor", "notion_read", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	const calls = 30
	var ids []string
	for i := range calls {
		body := `{"jsonrpc":"2.0","id":` + strconv.Itoa(i) + `,"method":"tools/call","params":{"name":"notion__get_pages","arguments":{"workspace_id":"ws_abc123"}}}`
		resp, err := gw.Authz().Check(context.Background(), authztest.EnvoyRequest("POST", map[string]string{
			"authorization": "Bearer " + token, "mcp-protocol-version": "2025-06-18"}, body))
		if err != nil { // allowed or denied (the role's rate limit), each decision is recorded
			t.Fatalf("Check %d: %v", i, err)
		}
		id, _ := resp.GetDynamicMetadata().AsMap()["decision_id"].(string)
		if id == "" {
			t.Fatalf("Check %d: no decision id in %v", i, resp.GetDynamicMetadata())
		}
		ids = append(ids, id)
	}

	waitFor(t, "every decision on stdout", func() bool { return strings.Count(stdout.String(), "\n") >= calls })
	lines := strings.Split(strings.TrimSuffix(stdout.String(), "\n"), "\n")
	for i, line := range lines {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("stdout line %d is not a JSON record: %v\n%s", i, err, line)
		}
		if rec["decision_id"] != ids[i] {
			t.Errorf("stdout line %d is decision %v, want %s", i, rec["decision_id"], ids[i])
		}
		if _, chained := rec["hash"]; chained {
			t.Errorf("stdout line %d carries the file's chain fields: %s", i, line)
		}
	}

	path := filepath.Join(cfg.DataDir, audit.FileName)
	var files []string
	waitFor(t, "the file to rotate and hold every decision", func() bool {
		files, _ = audit.ChainFiles(path)
		res, err := audit.Verify(files...)
		return err == nil && len(files) > 1 && res.Records == calls
	})
	res, err := audit.Verify(files...)
	if err != nil || res.FirstSeq != 1 || res.LastSeq != calls {
		t.Errorf("verify %d files: %+v, %v; want one chain of seq 1 to %d", len(files), res, err, calls)
	}
}
