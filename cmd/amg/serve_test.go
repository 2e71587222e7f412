package main

import (
	"context"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/amgateway/amg/authz/authztest"
	"github.com/amgateway/amg/internal/audit"
)

func TestServe(t *testing.T) {
	dataDir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	var stdout, stderr syncBuffer
	exited := make(chan int, 1)
	go func() {
		exited <- run(ctx, []string{"serve", "--dev", "--policy-dir", "../../policies", "--data-dir", dataDir,
			"--authz-listen", "127.0.0.1:0"}, &stdout, &stderr)
	}()

	addrRE := regexp.MustCompile(`msg="ext_authz listening" addr=(\S+)`)
	var addr string
	for deadline := time.Now().Add(30 * time.Second); addr == "" && time.Now().Before(deadline); {
		select {
		case code := <-exited:
			t.Fatalf("serve exited with %d:\n%s", code, stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
		if m := addrRE.FindStringSubmatch(stderr.String()); m != nil {
			addr = m[1]
		}
	}
	if addr == "" {
		t.Fatalf("serve did not start listening:\n%s", stderr.String())
	}
	token := strings.TrimSpace(stdout.String())
	if !regexp.MustCompile(`^amg_[0-9a-f]{64}$`).MatchString(token) {
		t.Fatalf("--dev printed %q, want a token alone", token)
	}

	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := authv3.NewAuthorizationClient(conn)
	hdrs := map[string]string{"authorization": "Bearer " + token, "mcp-protocol-version": "2025-06-18"}
	allowed := `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"notion__get_pages","arguments":{"workspace_id":"ws_abc123"}}}`
	denied := `{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"notion__drop_database","arguments":{}}}`
	resp, err := client.Check(ctx, authztest.EnvoyRequest("POST", hdrs, allowed))
	if err != nil || resp.GetOkResponse() == nil {
		t.Fatalf("allowed call: %v %v", resp.GetDeniedResponse(), err)
	}
	resp, err = client.Check(ctx, authztest.EnvoyRequest("POST", hdrs, denied))
	if err != nil || !strings.Contains(resp.GetDeniedResponse().GetBody(), `"code":"not_granted"`) {
		t.Fatalf("denied call: %v %v", resp, err)
	}

	cancel()
	select {
	case code := <-exited:
		if code != 0 {
			t.Fatalf("serve exited with %d after shutdown:\n%s", code, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not shut down")
	}
	res, err := audit.Verify(filepath.Join(dataDir, audit.FileName))
	if err != nil || res.Records != 2 {
		t.Errorf("audit log after shutdown: %+v %v; want 2 records that verify", res, err)
	}
}
