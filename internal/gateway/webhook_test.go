package gateway

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/amgateway/amg/internal/approval"
	"github.com/amgateway/amg/internal/config"
	"github.com/amgateway/amg/internal/secrets"
	"github.com/amgateway/amg/internal/syncbuf"
)

// A webhook URL often carries its secret in the path or query, as Slack's
// and Teams' do: a failed POST is logged with the scheme and host only,
// and a redirect, which would take the URL elsewhere as the Referer, is
// not followed.
func TestApprovalWebhookFailureLog(t *testing.T) {
	const secret = "T0PLANTED/B0PLANTED/xoxPLANTEDwebhooksecret"
	refusing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "no", http.StatusInternalServerError)
	}))
	t.Cleanup(refusing.Close)
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	// net/http would send the webhook's URL, secret and all, as the
	// Referer to wherever a redirect points.
	elsewhere := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		t.Errorf("the webhook's redirect was followed, Referer %q", r.Header.Get("Referer"))
	}))
	t.Cleanup(elsewhere.Close)
	redirecting := httptest.NewServer(http.RedirectHandler(elsewhere.URL+"/collect", http.StatusTemporaryRedirect))
	t.Cleanup(redirecting.Close)
	for _, tc := range []struct {
		name, base, want string
	}{
		{"unreachable", closed.URL, "connection refused"},
		{"error status", refusing.URL, "webhook answered 500 Internal Server Error"},
		{"redirect", redirecting.URL, "webhook redirected; not followed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var logs syncbuf.Buffer
			g := &Gateway{log: slog.New(slog.NewTextHandler(&logs, nil))}
			hook, err := config.ParseTemplate(tc.base + "/services/" + secret + "?token=" + secret)
			if err != nil {
				t.Fatal(err)
			}
			notify, err := g.notifier(hook, nil)
			if err != nil {
				t.Fatal(err)
			}
			notify(&approval.Approval{ID: "ap_1"})
			got := logs.String()
			if !strings.Contains(got, "approval webhook failed") || !strings.Contains(got, "approval_id=ap_1") ||
				!strings.Contains(got, tc.base) || !strings.Contains(got, tc.want) {
				t.Errorf("log = %s; want the failure, the approval, the webhook's scheme and host, and %q", got, tc.want)
			}
			if strings.Contains(got, "PLANTED") {
				t.Errorf("log shows the webhook's secret:\n%s", got)
			}
		})
	}
}

// A webhook whose reference cannot be resolved stops the start, with an
// error that names the reference and not the URL.
func TestApprovalWebhookUnresolved(t *testing.T) {
	hook, err := config.ParseTemplate("https://hooks.example/services/T0PLANTED/${env:AMG_TEST_NO_SUCH_WEBHOOK}")
	if err != nil {
		t.Fatal(err)
	}
	g := &Gateway{log: slog.New(slog.DiscardHandler)}
	notify, err := g.notifier(hook, secrets.NewDefault(nil))
	if notify != nil || err == nil || !strings.Contains(err.Error(), "approvals.webhook: env:AMG_TEST_NO_SUCH_WEBHOOK") ||
		strings.Contains(err.Error(), "PLANTED") {
		t.Errorf("notifier = %v, %v; want an error naming the reference and not the URL", notify != nil, err)
	}
}
