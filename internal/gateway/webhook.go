package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/amgateway/amg/internal/approval"
	"github.com/amgateway/amg/internal/config"
	"github.com/amgateway/amg/internal/secrets"
)

// notifier returns what tells the webhook at t, its references resolved
// with src, of each new pending approval, or nil without a webhook: a
// JSON POST of the approval (never the request body, which may hold
// secrets, nor its hash), retried briefly, its failure logged. The call waits whether
// or not anyone was told.
func (g *Gateway) notifier(t config.Template, src secrets.Source) (func(*approval.Approval), error) {
	if t.String() == "" {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := t.Expand(ctx, src)
	if err != nil {
		return nil, fmt.Errorf("approvals.webhook: %w", err)
	}
	hook := s.Reveal()
	// Slack- and Teams-style webhook URLs carry their secret in the path
	// or query: logs name the scheme and host only.
	var where string
	if u, err := url.Parse(hook); err == nil {
		where = (&url.URL{Scheme: u.Scheme, Host: u.Host}).String()
	}
	client := &http.Client{Timeout: 5 * time.Second, CheckRedirect: refuseWebhookRedirect}
	return func(a *approval.Approval) {
		// Not body_sha256 either: whoever reads the webhook (a whole chat
		// channel) could confirm a guess of a low-entropy argument by
		// hashing it with the rest of the request.
		told := *a
		told.Body, told.BodySHA256 = nil, ""
		payload, _ := json.Marshal(map[string]any{"event": "approval.pending", "approval": &told})
		var err error
		for attempt := range 3 {
			if attempt > 0 {
				time.Sleep(time.Duration(attempt) * time.Second)
			}
			if err = post(client, hook, payload); err == nil || errors.Is(err, errWebhookRedirect) {
				break
			}
		}
		if err == nil {
			return
		}
		g.log.Error("approval webhook failed; the call still waits", "approval_id", a.ID, "webhook", where, "err", err)
	}, nil
}

// errWebhookRedirect is a webhook's redirect, which is not followed:
// net/http would send the webhook's URL, its secret path and query with
// it, as the Referer to wherever the redirect points, and the payload
// along.
var errWebhookRedirect = errors.New("webhook redirected; not followed")

func refuseWebhookRedirect(*http.Request, []*http.Request) error { return errWebhookRedirect }

// post sends payload to hook. Its errors do not quote hook.
func post(client *http.Client, hook string, payload []byte) error {
	req, err := http.NewRequestWithContext(context.Background(), http.MethodPost, hook, bytes.NewReader(payload))
	if err != nil {
		return errors.New("invalid webhook URL")
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		// A *url.Error quotes the whole URL; its cause does not.
		if ue, ok := errors.AsType[*url.Error](err); ok {
			return ue.Err
		}
		return err
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("webhook answered %s", resp.Status)
	}
	return nil
}
