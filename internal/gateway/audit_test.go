package gateway

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/amgateway/amg/authz/authztest"
	"github.com/amgateway/amg/internal/audit"
	"github.com/amgateway/amg/internal/config"
	"github.com/amgateway/amg/internal/redistest"
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

// With replicas, the console of each searches the decisions of all: every
// replica ships its audit records to Redis, and the console reads them
// there.
func TestConsoleSearchesEveryReplicasAudit(t *testing.T) {
	a, b := consoleReplicas(t, redistest.Start(t).Addr)
	token, _, err := a.IssueToken(context.Background(), "auditor-on-a", "notion_read", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	body := `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"notion__get_pages","arguments":{"workspace_id":"ws_abc123"}}}`
	resp, err := a.Authz().Check(context.Background(), authztest.EnvoyRequest("POST", map[string]string{
		"authorization": "Bearer " + token, "mcp-protocol-version": "2025-06-18"}, body))
	if err != nil || resp.GetOkResponse() == nil {
		t.Fatalf("Check on replica A: %v, %v", resp, err)
	}
	id, _ := resp.GetDynamicMetadata().AsMap()["decision_id"].(string)

	alice := signInConsole(t, b, "alice")
	var page string
	waitFor(t, "replica B's console to find replica A's decision", func() bool {
		var code int
		code, page = consoleGetPage(t, b, alice, "/console/audit?decision_id="+id)
		return code == http.StatusOK && strings.Contains(page, "auditor-on-a")
	})
	if !strings.Contains(page, `data-testid="record"`) || !strings.Contains(page, "get_pages") {
		t.Errorf("the record is not shown whole:\n%s", page)
	}
	replicaA, err := replicaID(a.cfg.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(page, `<code data-testid="replica">`+replicaA+`</code>`) {
		t.Errorf("the record does not name replica A, %s:\n%s", replicaA, page)
	}
	// B's own file does not hold it: the console read the shared stream.
	recs, _, err := audit.FileLog(filepath.Join(b.cfg.DataDir, audit.FileName)).Search(context.Background(), audit.Query{DecisionID: id})
	if err != nil || len(recs) != 0 {
		t.Errorf("replica B's file holds %d records of the decision (%v), want none", len(recs), err)
	}
}

// audit.stream_max_records bounds the shared stream: a replica with a
// longer backlog than that ships only its latest records.
func TestAuditStreamKeepsWhatTheConfigSays(t *testing.T) {
	srv := redistest.Start(t)
	cfg := loopbackConfig(t, "../../policies")
	cfg.Redis.Address, cfg.Audit.StreamMaxRecords = srv.Addr, 50
	d, err := audit.NewFileDevice(filepath.Join(cfg.DataDir, audit.FileName), nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 200 {
		if err := d.Write(&audit.Record{Time: time.Now(), DecisionID: "dec-" + strconv.Itoa(i), Verdict: "allow"}); err != nil {
			t.Fatal(err)
		}
	}
	d.Close()
	serveForTest(t, cfg, nil)

	stream := audit.NewStream(srv.Client(), nil)
	var seqs []uint64
	waitFor(t, "the backlog's last record in the stream", func() bool {
		seqs = nil
		err := stream.Records(context.Background(), func(r audit.Record) bool {
			seqs = append(seqs, r.Seq)
			return true
		})
		return err == nil && len(seqs) > 0 && seqs[len(seqs)-1] == 200
	})
	if len(seqs) != 50 || seqs[0] != 151 {
		t.Errorf("the stream holds %d records from seq %d, want the latest 50, from 151", len(seqs), seqs[0])
	}
}

// A replica's name in the audit stream is made once per data directory:
// the same after a restart, another for another replica.
func TestReplicaID(t *testing.T) {
	dir, other := t.TempDir(), t.TempDir()
	first, err := replicaID(dir)
	if err != nil || first == "" {
		t.Fatalf("replicaID = %q, %v", first, err)
	}
	if again, err := replicaID(dir); err != nil || again != first {
		t.Errorf("after a restart the replica is %q (%v), was %q", again, err, first)
	}
	if second, err := replicaID(other); err != nil || second == first {
		t.Errorf("another data directory's replica is %q (%v), the first's %q", second, err, first)
	}
}

// A gateway whose audit log cannot record refuses every call: /readyz
// says it is not ready, and why, until the log records again.
func TestReadyzFollowsTheAuditLog(t *testing.T) {
	gw := serveForTest(t, loopbackConfig(t, "../../policies"), nil)
	token, _, err := gw.IssueToken(context.Background(), "agent-1", "notion_editor", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cs := connectAgent(t, "http://"+gw.MCPAddr()+config.MCPPath, token)
	if code, body := getReadyz(t, gw); code != http.StatusOK {
		t.Fatalf("/readyz = %d %q, want 200", code, body)
	}
	path := filepath.Join(gw.cfg.DataDir, audit.FileName)
	if err := os.Rename(path, path+".away"); err != nil {
		t.Fatal(err)
	}
	call := &mcp.CallToolParams{Name: "notion__get_pages", Arguments: json.RawMessage(`{"workspace_id":"ws_abc123"}`)}
	// The first call after the file went away is what finds it gone.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := cs.CallTool(context.Background(), call); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("calls still pass with the audit file gone")
		}
	}
	if code, body := getReadyz(t, gw); code != http.StatusServiceUnavailable || body != "audit log cannot record\n" {
		t.Errorf("every call refused: /readyz = %d %q, want 503 \"audit log cannot record\"", code, body)
	}
	if err := os.Rename(path+".away", path); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		code, body := getReadyz(t, gw)
		if code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the audit file back: /readyz = %d %q, want 200", code, body)
		}
	}
}
