package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/amgateway/amg/internal/admin"
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
