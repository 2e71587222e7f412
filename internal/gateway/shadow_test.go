package gateway

import (
	"context"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/amgateway/amg/authz/authztest"
	"github.com/amgateway/amg/internal/demo"
	"github.com/amgateway/amg/internal/shadow"
	"github.com/amgateway/amg/internal/store"
)

// Every call of a shadow-mode role is counted, the would-be denials among
// them, and the counts reach the database by the time the gateway has
// closed, for `amg shadow report` to read. Lists are not calls.
func TestShadowCountsReachTheDatabase(t *testing.T) {
	cfg := loopbackConfig(t, "../../policies")
	gw, err := New(cfg, &Options{Builtins: Builtins{"demo": demo.NewServer(nil).MCP()}})
	if err != nil {
		t.Fatal(err)
	}
	token, _, err := gw.IssueToken(context.Background(), "support-bot", "support_shadow", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for i, args := range []string{
		`{"query":"ok","workspace_id":"ws_abc123"}`,
		`{"query":"ok","workspace_id":"ws_other"}`, // would be denied
		`{"query":"fine","workspace_id":"ws_abc123"}`,
	} {
		body := `{"jsonrpc":"2.0","id":` + strconv.Itoa(i) + `,"method":"tools/call","params":{"name":"notion__search","arguments":` + args + `}}`
		resp, err := gw.Authz().Check(context.Background(), authztest.EnvoyRequest("POST", map[string]string{
			"authorization": "Bearer " + token, "mcp-protocol-version": "2025-06-18"}, body))
		if err != nil || resp.GetOkResponse() == nil {
			t.Fatalf("call %d of a shadow role not allowed: %v %v", i, resp, err)
		}
	}
	gw.Authz().Check(context.Background(), authztest.EnvoyRequest("POST", map[string]string{
		"authorization": "Bearer " + token, "mcp-protocol-version": "2025-06-18"}, `{"jsonrpc":"2.0","id":9,"method":"tools/list"}`))
	if err := gw.Close(); err != nil {
		t.Fatal(err)
	}

	db, err := store.Open(filepath.Join(cfg.DataDir, DBFile))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	counts, err := shadow.NewSQLite(db)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	got, err := counts.Counts(context.Background(), now.Add(-time.Hour), now)
	if err != nil {
		t.Fatal(err)
	}
	if want := []shadow.Count{{Role: "support_shadow", Day: shadow.Day(now), N: 1, Calls: 3}}; !cmp.Equal(got, want) {
		t.Errorf("shadow counts in the database after Close = %v, want %v", got, want)
	}
}
