package gateway

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/amgateway/amg/internal/approval"
	"github.com/amgateway/amg/internal/config"
	"github.com/amgateway/amg/internal/secrets"
	"github.com/amgateway/amg/internal/syncbuf"
)

// A webhook URL often carries its secret in the path or query, as Slack's
// and Teams' do: a failed POST is logged with the scheme and host only,
// and a redirect, which would take the URL elsewhere as the Referer, is
// not followed. A 4xx (a revoked Slack URL answers 404, a receiver that
// refuses the signature 401) is a failure as a 5xx is; neither it nor a
// redirect, which asking again would not change, is asked again, and a
// 5xx is.
func TestApprovalWebhookFailureLog(t *testing.T) {
	const secret = "T0PLANTED/B0PLANTED/xoxPLANTEDwebhooksecret"
	var failed, forbidden atomic.Int32 // requests to refusing and forbidding
	refusing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		failed.Add(1)
		http.Error(w, "no", http.StatusInternalServerError)
	}))
	t.Cleanup(refusing.Close)
	forbidding := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		forbidden.Add(1)
		http.Error(w, "no", http.StatusForbidden)
	}))
	t.Cleanup(forbidding.Close)
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	// net/http would send the webhook's URL, secret and all, as the
	// Referer to wherever a redirect points.
	elsewhere := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		t.Errorf("the webhook's redirect was followed, Referer %q", r.Header.Get("Referer"))
	}))
	t.Cleanup(elsewhere.Close)
	var redirected atomic.Int32
	redirect := http.RedirectHandler(elsewhere.URL+"/collect", http.StatusTemporaryRedirect)
	redirecting := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		redirected.Add(1)
		redirect.ServeHTTP(w, r)
	}))
	t.Cleanup(redirecting.Close)
	for _, tc := range []struct {
		name, base, want string
		asked            *atomic.Int32 // if set, counts the webhook's requests
		times            int32         // which must be so many
	}{
		{"unreachable", closed.URL, "connection refused", nil, 0},
		{"error status", refusing.URL, "webhook answered 500 Internal Server Error", &failed, 3},
		{"client error status", forbidding.URL, "webhook answered 403 Forbidden", &forbidden, 1},
		{"redirect", redirecting.URL, "webhook redirected; not followed", &redirected, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var logs syncbuf.Buffer
			g := &Gateway{log: slog.New(slog.NewTextHandler(&logs, nil))}
			hook, err := config.ParseTemplate(tc.base + "/services/" + secret + "?token=" + secret)
			if err != nil {
				t.Fatal(err)
			}
			w, err := g.notifier(hook, config.Template{}, nil)
			if err != nil {
				t.Fatal(err)
			}
			w.notify(&approval.Approval{ID: "ap_1"})
			w.Close(context.Background()) // once it has been told, or has failed
			got := logs.String()
			if !strings.Contains(got, "approval webhook failed") || !strings.Contains(got, "approval_id=ap_1") ||
				!strings.Contains(got, tc.base) || !strings.Contains(got, tc.want) {
				t.Errorf("log = %s; want the failure, the approval, the webhook's scheme and host, and %q", got, tc.want)
			}
			if strings.Contains(got, "PLANTED") {
				t.Errorf("log shows the webhook's secret:\n%s", got)
			}
			if tc.asked != nil && tc.asked.Load() != tc.times {
				t.Errorf("the webhook was asked %d times, want %d", tc.asked.Load(), tc.times)
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
	w, err := g.notifier(hook, config.Template{}, secrets.NewDefault(nil))
	if w != nil || err == nil || !strings.Contains(err.Error(), "approvals.webhook: env:AMG_TEST_NO_SUCH_WEBHOOK") ||
		strings.Contains(err.Error(), "PLANTED") {
		t.Errorf("notifier = %v, %v; want an error naming the reference and not the URL", w != nil, err)
	}
}

// testNotifier is g's webhook (its log and configuration) posting to url.
func testNotifier(t *testing.T, g *Gateway, url string) *webhook {
	t.Helper()
	tmpl, err := config.ParseTemplate(url)
	if err != nil {
		t.Fatal(err)
	}
	w, err := g.notifier(tmpl, config.Template{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// The webhook is told who waits for what, and never the request: not its
// body, nor the body's SHA-256, with which whoever reads the webhook could
// confirm a guess of a low-entropy argument (a PIN) offline.
func TestApprovalWebhookPayload(t *testing.T) {
	got := make(chan []byte, 1)
	hook := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- b
	}))
	t.Cleanup(hook.Close)
	w := testNotifier(t, &Gateway{log: slog.New(slog.DiscardHandler)}, hook.URL+"/services/x")
	defer w.Close(context.Background())
	body := `{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"bank__transfer","arguments":{"to":"acct_1","pin":"4821"}}}`
	a, err := approval.New("d1", "bot", "payer", "bank", "transfer", []byte(body), time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	w.notify(a)
	payload := <-got
	var p struct {
		Event    string
		Approval map[string]any
	}
	if err := json.Unmarshal(payload, &p); err != nil {
		t.Fatal(err)
	}
	if p.Event != "approval.pending" || p.Approval["id"] != a.ID || p.Approval["agent"] != "bot" || p.Approval["tool"] != "transfer" {
		t.Errorf("payload %s does not name the event, the approval, its agent and tool", payload)
	}
	if _, ok := p.Approval["body_sha256"]; ok || strings.Contains(string(payload), a.BodySHA256) || strings.Contains(string(payload), "4821") {
		t.Errorf("payload %s carries the request or its hash", payload)
	}
	if a.BodySHA256 == "" {
		t.Error("telling the webhook cleared the approval's own body_sha256")
	}
}

// With approvals.webhook_secret, each delivery carries the headers of the
// Standard Webhooks specification, which that project's own library
// verifies, a retry under the same webhook-id; without it, none.
func TestApprovalWebhookSigned(t *testing.T) {
	type delivery struct {
		body   []byte
		header http.Header
	}
	got := make(chan delivery, 2)
	var attempts atomic.Int32
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- delivery{b, r.Header.Clone()}
		if attempts.Add(1) == 1 {
			http.Error(w, "try again", http.StatusServiceUnavailable)
		}
	}))
	t.Cleanup(hook.Close)
	key := make([]byte, 32)
	rand.Read(key)
	secret := "whsec_" + base64.StdEncoding.EncodeToString(key)
	t.Setenv("AMG_TEST_WEBHOOK_SECRET", secret)
	tmpl, err := config.ParseTemplate(hook.URL + "/amg")
	if err != nil {
		t.Fatal(err)
	}
	ref, err := config.ParseTemplate("${env:AMG_TEST_WEBHOOK_SECRET}")
	if err != nil {
		t.Fatal(err)
	}
	w, err := (&Gateway{log: slog.New(slog.DiscardHandler)}).notifier(tmpl, ref, secrets.NewDefault(nil))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close(context.Background())
	receiver, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := standardwebhooks.NewWebhook("whsec_" + base64.StdEncoding.EncodeToString(make([]byte, 32)))
	if err != nil {
		t.Fatal(err)
	}
	w.notify(&approval.Approval{ID: "apr_1", Agent: "bot"})
	for attempt := range 2 {
		d := <-got
		if err := receiver.Verify(d.body, d.header); err != nil {
			t.Errorf("attempt %d: the receiver's library refuses the delivery: %v (headers %v)", attempt+1, err, d.header)
		}
		if err := stranger.Verify(d.body, d.header); err == nil {
			t.Errorf("attempt %d: the delivery verifies under another secret", attempt+1)
		}
		if id := d.header.Get("webhook-id"); id != "apr_1" {
			t.Errorf("attempt %d: webhook-id %q, want the approval's id", attempt+1, id)
		}
		tampered := bytes.Replace(d.body, []byte("bot"), []byte("bob"), 1)
		if err := receiver.Verify(tampered, d.header); err == nil {
			t.Errorf("attempt %d: an altered body verifies", attempt+1)
		}
	}

	unsigned := testNotifier(t, &Gateway{log: slog.New(slog.DiscardHandler)}, hook.URL+"/amg")
	defer unsigned.Close(context.Background())
	unsigned.notify(&approval.Approval{ID: "apr_2", Agent: "bot"})
	if d := <-got; d.header.Get("webhook-signature") != "" || d.header.Get("webhook-id") != "" {
		t.Errorf("a webhook without a secret got signature headers: %v", d.header)
	}
}

// A signing secret that is not one stops the start, with an error that
// does not quote it.
func TestApprovalWebhookBadSecret(t *testing.T) {
	const planted = "whsec_PLANTEDnotbase64!"
	t.Setenv("AMG_TEST_WEBHOOK_SECRET", planted)
	// base64 but for a line break, which the decoder would skip.
	t.Setenv("AMG_TEST_WEBHOOK_SECRET_CRLF", "whsec_PLANTEDx"+base64.StdEncoding.EncodeToString(make([]byte, 30))+"\r\n")
	tmpl, err := config.ParseTemplate("https://hooks.example/amg")
	if err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{"${env:AMG_TEST_WEBHOOK_SECRET}", "${env:AMG_TEST_WEBHOOK_SECRET_CRLF}", "${env:AMG_TEST_NO_SUCH_SECRET}"} {
		secret, err := config.ParseTemplate(ref)
		if err != nil {
			t.Fatal(err)
		}
		w, err := (&Gateway{log: slog.New(slog.DiscardHandler)}).notifier(tmpl, secret, secrets.NewDefault(nil))
		if w != nil || err == nil || !strings.HasPrefix(err.Error(), "approvals.webhook_secret: ") || strings.Contains(err.Error(), "PLANTED") {
			t.Errorf("%s: notifier = %v, %v; want an error naming approvals.webhook_secret, not quoting it", ref, w != nil, err)
		}
	}
}

// The queue holds what the webhook is told, not the request: while the
// webhook is slow, approvals parked and abandoned at once must not keep
// their bodies (up to max_body_bytes each) in memory.
func TestApprovalWebhookQueueHoldsNoBody(t *testing.T) {
	release := make(chan struct{})
	busy := make(chan struct{}, webhookWorkers)
	hook := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		busy <- struct{}{}
		<-release
	}))
	t.Cleanup(hook.Close)
	w := testNotifier(t, &Gateway{log: slog.New(slog.DiscardHandler)}, hook.URL+"/services/x")
	defer w.Close(context.Background())
	defer close(release)
	// Every worker busy telling the webhook, the next approval stays queued.
	for i := range webhookWorkers {
		w.notify(&approval.Approval{ID: fmt.Sprintf("ap_%d", i), Agent: fmt.Sprintf("bot%d", i)})
	}
	for range webhookWorkers {
		<-busy
	}
	const planted = "PLANTEDBODY"
	a, err := approval.New("d1", "bot", "payer", "bank", "transfer", []byte(strings.Repeat(planted, 1000)), time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	w.notify(a)
	queued := fmt.Sprintf("%s", <-w.queue)
	if !strings.Contains(queued, a.ID) {
		t.Fatalf("queued %.300s, want the approval", queued)
	}
	if strings.Contains(queued, planted) || strings.Contains(queued, a.BodySHA256) {
		t.Errorf("the queue holds the approval's request body or its hash: %.300s", queued)
	}
}

// An agent that parks calls and abandons them at once cannot make the
// gateway tell the webhook of them all at once: notify returns at once,
// a few workers tell it one approval each, and past a bounded queue an
// approval is not told, which is logged.
func TestApprovalWebhookBounded(t *testing.T) {
	release := make(chan struct{})
	var inFlight, most, told atomic.Int32
	hook := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		n := inFlight.Add(1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		<-release
		inFlight.Add(-1)
		told.Add(1)
	}))
	t.Cleanup(hook.Close)
	var logs syncbuf.Buffer
	w := testNotifier(t, &Gateway{log: slog.New(slog.NewTextHandler(&logs, nil))}, hook.URL+"/services/x")
	// Past the queue's room and what the workers took off it meanwhile
	// (none to all of them), approvals are not told. Each of another
	// agent, none has its share of the queue taken.
	const parked = webhookWorkers + webhookQueue + 40
	for i := range parked {
		w.notify(&approval.Approval{ID: fmt.Sprintf("ap_%d", i), Agent: fmt.Sprintf("bot%d", i)})
	}
	dropped := strings.Count(logs.String(), "too many approvals waiting")
	if dropped < 40 || dropped > 40+webhookWorkers {
		t.Errorf("%d approvals not told for want of room, want 40 to %d:\n%.2000s", dropped, 40+webhookWorkers, logs.String())
	}
	close(release)
	w.Close(context.Background())
	if m := most.Load(); m > webhookWorkers {
		t.Errorf("the webhook was told of %d approvals at once, want at most %d", m, webhookWorkers)
	}
	if n := int(told.Load()); n+dropped != parked {
		t.Errorf("the webhook was told of %d approvals and %d were not told, of %d", n, dropped, parked)
	}
}

// A call parked while the gateway closes is notified after the webhook's
// Close: it is not told, which is logged, and the process goes on to
// drain the audit log rather than end in a panic.
func TestApprovalWebhookNotifyAfterClose(t *testing.T) {
	var logs syncbuf.Buffer
	w := testNotifier(t, &Gateway{log: slog.New(slog.NewTextHandler(&logs, nil))}, "http://127.0.0.1:1/services/x")
	w.Close(context.Background())
	func() {
		defer func() {
			if r := recover(); r != nil {
				t.Errorf("notify after Close panicked: %v", r)
			}
		}()
		w.notify(&approval.Approval{ID: "ap_late"})
	}()
	if got := logs.String(); !strings.Contains(got, "the gateway is closing") || !strings.Contains(got, "approval_id=ap_late") {
		t.Errorf("log = %s; want that the gateway is closing and the approval not told", got)
	}
	w.Close(context.Background()) // a second Close is harmless
}

// One agent parking calls and abandoning them at once, within
// max_pending_per_agent, cannot fill the webhook's queue with approvals
// that no longer wait and so keep another agent's from being told: past
// its share of the queue, its own are not told, which is logged.
func TestApprovalWebhookOneAgentCannotSilenceOthers(t *testing.T) {
	release := make(chan struct{})
	told := make(chan string, webhookWorkers+webhookQueue+1)
	hook := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		<-release
		var p struct{ Approval struct{ ID string } }
		if err := json.NewDecoder(r.Body).Decode(&p); err != nil {
			t.Error(err)
		}
		told <- p.Approval.ID
	}))
	t.Cleanup(hook.Close)
	var logs syncbuf.Buffer
	w := testNotifier(t, &Gateway{log: slog.New(slog.NewTextHandler(&logs, nil))}, hook.URL+"/services/x")
	for i := range webhookWorkers + webhookQueue {
		w.notify(&approval.Approval{ID: fmt.Sprintf("ap_flood%d", i), Agent: "flooder", State: approval.Pending})
	}
	w.notify(&approval.Approval{ID: "ap_victim", Agent: "victim", State: approval.Pending})
	close(release)
	w.Close(context.Background())
	close(told)
	flooded, victim := 0, false
	for id := range told {
		flooded += strings.Count(id, "ap_flood")
		victim = victim || id == "ap_victim"
	}
	if !victim {
		t.Errorf("the other agent's approval was not told (%d of the flooder's were); log: %.500s", flooded, logs.String())
	}
	if flooded == 0 || flooded > webhookPerAgent {
		t.Errorf("%d of the flooder's approvals were told, want 1 to %d", flooded, webhookPerAgent)
	}
	if got := logs.String(); !strings.Contains(got, "as many of this agent's approvals waiting to be told as one agent may") ||
		!strings.Contains(got, "agent=flooder") {
		t.Errorf("log = %.500s; want the flooder's approvals past its share not told", got)
	}
}

// An agent's share of the webhook's queue is max_pending_per_agent, as
// many approvals as it may have pending at once, and comes back as they
// are told: an agent that had its share queued has its next told.
func TestApprovalWebhookAgentShare(t *testing.T) {
	release := make(chan struct{})
	var told atomic.Int32
	hook := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		<-release
		told.Add(1)
	}))
	t.Cleanup(hook.Close)
	var logs syncbuf.Buffer
	w := testNotifier(t, &Gateway{log: slog.New(slog.NewTextHandler(&logs, nil)), cfg: &config.Config{MaxPendingApprovalsPerAgent: 3}}, hook.URL+"/services/x")
	for i := range 5 {
		w.notify(&approval.Approval{ID: fmt.Sprintf("ap_%d", i), Agent: "bot"})
	}
	if n := strings.Count(logs.String(), "as one agent may"); n != 2 {
		t.Errorf("%d of 5 approvals not told for the agent's share of 3, want 2:\n%s", n, logs.String())
	}
	// Once told, its places are given back. The workers end with the
	// queue, so Close is when every delivery has.
	close(release)
	w.Close(context.Background())
	if n := told.Load(); n != 3 {
		t.Errorf("the webhook was told of %d approvals, want 3", n)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.queued) != 0 {
		t.Errorf("places still taken after every approval was told: %v", w.queued)
	}
}
