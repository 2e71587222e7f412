package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/amgateway/amg/internal/admin"
	"github.com/amgateway/amg/internal/approval"
)

// An answer of the admin API over what amg approvals reads (a parked
// request, where max_body_bytes is well over its 1 MiB default, may be)
// fails with an error naming the limit: show would print the request
// without its end and exit 0, list would fail to decode it.
func TestApprovalsAnswerTooLarge(t *testing.T) {
	// A JSON string of n bytes, quotes included.
	answer := func(n int) string { return `"` + strings.Repeat("x", n-2) + `"` }
	for _, tc := range []struct {
		name string
		args []string
		size int
		ok   bool
	}{
		{"show at the limit", []string{"show", "apr_1"}, maxAdminAnswer, true},
		{"show over", []string{"show", "apr_1"}, maxAdminAnswer + 1, false},
		{"list over", []string{"list"}, maxAdminAnswer + 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				_, _ = w.Write([]byte(answer(tc.size)))
			}))
			defer srv.Close()
			tok := admin.TokenPrefix + strings.Repeat("a", 64)
			code, out, errOut := runCLI(t, append([]string{"approvals", "--admin-url", srv.URL, "--token", tok}, tc.args...)...)
			if tc.ok {
				if code != 0 || len(out) != tc.size {
					t.Errorf("exit %d, %d bytes printed, stderr %q; want all %d", code, len(out), errOut, tc.size)
				}
				return
			}
			if want := "amg: admin API: the answer is over 16 MiB, more than amg approvals reads; read it with curl, or in the console\n"; code == 0 || out != "" || errOut != want {
				t.Errorf("exit %d, %d bytes printed, stderr %q; want %q", code, len(out), errOut, want)
			}
		})
	}
}

// amg approvals is how a CLI approver reads a parked request: like the
// console, it must not print characters that hide or reorder text (an
// agent could show an approver one request and send another) nor control
// characters a terminal obeys, and it says when it escaped some.
func TestApprovalsEscapeHiddenCharacters(t *testing.T) {
	store := approval.NewMemory(nil)
	park := func(agent, body string) *approval.Approval {
		t.Helper()
		a, err := approval.New("dec_1", agent, "dev", "notion", "delete_page", []byte(body), time.Now(), time.Minute)
		if err == nil {
			err = store.Create(context.Background(), a)
		}
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	plain := park("bot", `{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"notion__delete_page","arguments":{"page_id":"pg_1"}}}`)
	odd := park("bot\u202egnp.exe\u0085", "{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"tools/call\",\"params\":{\"name\":\"notion__delete_page\","+
		"\"arguments\":{\"page_id\":\"report\u202efdp.exe\",\"note\":\"a\u200bb\U000e0041\"}}}")
	tok := admin.TokenPrefix + strings.Repeat("a", 64)
	srv := httptest.NewServer(admin.Handler(admin.Deps{Approvals: store, Token: tok}))
	defer srv.Close()
	approvals := func(args ...string) (string, string) {
		t.Helper()
		code, out, errOut := runCLI(t, append([]string{"approvals", "--admin-url", srv.URL, "--token", tok}, args...)...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, errOut)
		}
		return out, errOut
	}
	const warning = "warning: characters that would not show, or would reorder the text around them, are written as their escapes (such as \\u202e)\n"

	out, errOut := approvals("show", odd.ID)
	for _, r := range []string{"\u202e", "\u200b", "\U000e0041", "\u0085"} {
		if strings.Contains(out, r) {
			t.Errorf("approvals show prints %U as it is:\n%s", []rune(r)[0], out)
		}
	}
	for _, want := range []string{`"page_id": "report\u202efdp.exe"`, `"note": "a\u200bb\udb40\udc41"`, `"agent": "bot\u202egnp.exe\u0085"`} {
		if !strings.Contains(out, want) {
			t.Errorf("approvals show does not print %s:\n%s", want, out)
		}
	}
	// What it prints is JSON, and says what the API says.
	var shown, stored map[string]any
	if err := json.Unmarshal([]byte(out), &shown); err != nil {
		t.Errorf("approvals show prints no JSON: %v\n%s", err, out)
	} else if shown["agent"] != odd.Agent {
		t.Errorf("approvals show's agent decodes to %q, want %q", shown["agent"], odd.Agent)
	}
	if err := json.Unmarshal(odd.Body, &stored); err != nil {
		t.Fatal(err)
	}
	if shown != nil && !reflect.DeepEqual(shown["request"], stored) {
		t.Errorf("approvals show's request decodes to %v, want %v", shown["request"], stored)
	}
	if errOut != warning {
		t.Errorf("approvals show: stderr %q, want %q", errOut, warning)
	}

	out, errOut = approvals("list")
	if strings.Contains(out, "\u202e") || strings.Contains(out, "\u0085") || !strings.Contains(out, `bot\u202egnp.exe\u0085`) {
		t.Errorf("approvals list prints the agent's name as it is:\n%s", out)
	}
	if errOut != warning {
		t.Errorf("approvals list: stderr %q, want %q", errOut, warning)
	}

	// Nothing to escape, nothing said.
	out, errOut = approvals("show", plain.ID)
	if errOut != "" || !strings.Contains(out, `"page_id": "pg_1"`) {
		t.Errorf("approvals show of a plain request: stderr %q, stdout\n%s", errOut, out)
	}
	if _, err := store.Finish(context.Background(), odd.ID, approval.Denied, "alice", "", time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, errOut = approvals("list"); errOut != "" {
		t.Errorf("approvals list of plain approvals: stderr %q", errOut)
	}
}
