package gateway

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// The broker learns which of its sessions' tokens live from the gateway's
// token store: neither revoked nor expired. One it never stored is not
// live.
func TestLiveTokens(t *testing.T) {
	gw := serveForTest(t, testConfig(t, nil, "role: ops\n"), nil)
	ctx := context.Background()
	var ids []string
	for _, ttl := range []time.Duration{time.Hour, time.Hour, time.Millisecond} {
		_, tok, err := gw.IssueToken(ctx, "bot", "ops", ttl)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, tok.ID)
	}
	if err := gw.tokens.Revoke(ctx, ids[1], time.Now()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Millisecond) // past the third token's expiry
	live, err := gw.liveTokens(ctx, append(ids, "0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]bool{ids[0]: true}, live); diff != "" {
		t.Errorf("live tokens (-want +got):\n%s", diff)
	}
}
