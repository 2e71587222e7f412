package gateway

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/amgateway/amg/internal/approval"
	"github.com/amgateway/amg/internal/config"
	"github.com/amgateway/amg/internal/secrets"
)

// Bounds of what the webhook is sent at once: an agent that parks calls
// and abandons them at once must not make the gateway hold a connection
// and a goroutine per call for as long as the webhook takes, nor flood
// whoever reads it, nor take every place in the queue, leaving none for
// the approvals of other agents. One agent's approvals take at most
// approvals.max_pending_per_agent places, as many as it may have pending
// at once, and never more than webhookPerAgent, however high that is set.
const (
	webhookWorkers  = 4
	webhookQueue    = 256
	webhookPerAgent = webhookQueue / 8
)

// webhook tells an approvals webhook of each new pending approval: a JSON
// POST of the approval (never the request body, which may hold secrets,
// nor its hash), retried briefly, its failure logged. Approvals wait in a
// bounded queue for a few workers; one that finds the queue full is not
// told, nor is one whose agent has its share of the queue taken; both are
// logged. The call waits whether or not anyone was told.
type webhook struct {
	client *http.Client
	url    string
	key    []byte // signs each delivery, if not nil (see sign)
	where  string // the URL's scheme and host, which logs name
	log    *slog.Logger
	queue  chan webhookNote

	// mu orders notify's sends before Close closes queue: a call parked
	// just as the gateway closes is notified after Close, and a send on
	// the closed queue would end the process.
	mu     sync.Mutex
	closed bool
	// queued counts, by agent, the approvals queued or being told, of
	// which an agent may have perAgent.
	queued   map[string]int
	perAgent int

	ctx     context.Context // ends the deliveries under way at Close
	cancel  context.CancelFunc
	workers sync.WaitGroup
}

// notifier returns the webhook of t, signing what it sends with secret
// unless that is empty, their references resolved with src, with its
// workers started, or nil without a webhook.
func (g *Gateway) notifier(t, secret config.Template, src secrets.Source) (*webhook, error) {
	if t.String() == "" {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := t.Expand(ctx, src)
	if err != nil {
		return nil, fmt.Errorf("approvals.webhook: %w", err)
	}
	var key []byte
	if secret.String() != "" {
		v, err := secret.Expand(ctx, src)
		if err == nil {
			key, err = config.WebhookKey(v.Reveal())
		}
		if err != nil {
			return nil, fmt.Errorf("approvals.webhook_secret: %w", err)
		}
	}
	w := &webhook{url: s.Reveal(), key: key, log: g.log, queue: make(chan webhookNote, webhookQueue),
		queued: make(map[string]int), perAgent: webhookPerAgent,
		client: &http.Client{Timeout: 5 * time.Second, CheckRedirect: refuseWebhookRedirect,
			Transport: &http.Transport{MaxConnsPerHost: webhookWorkers, Proxy: http.ProxyFromEnvironment}}}
	// Slack- and Teams-style webhook URLs carry their secret in the path
	// or query: logs name the scheme and host only.
	if u, err := url.Parse(w.url); err == nil {
		w.where = (&url.URL{Scheme: u.Scheme, Host: u.Host}).String()
	}
	if g.cfg != nil && g.cfg.MaxPendingApprovalsPerAgent > 0 {
		w.perAgent = min(w.perAgent, g.cfg.MaxPendingApprovalsPerAgent)
	}
	w.ctx, w.cancel = context.WithCancel(context.Background())
	for range webhookWorkers {
		w.workers.Go(func() {
			for n := range w.queue {
				w.deliver(n)
				w.release(n.agent)
			}
		})
	}
	return w, nil
}

// webhookNote is what the webhook is told of an approval. It is encoded
// as the approval is queued: the queue holds the payload, not the
// request body, which it never sends.
type webhookNote struct {
	id, agent string
	payload   []byte
}

// notify queues a for the webhook and returns at once. After Close, a
// is not told, which is logged.
func (w *webhook) notify(a *approval.Approval) {
	// Not body_sha256 either: whoever reads the webhook (a whole chat
	// channel) could confirm a guess of a low-entropy argument by
	// hashing it with the rest of the request.
	told := *a
	told.Body, told.BodySHA256 = nil, ""
	payload, _ := json.Marshal(map[string]any{"event": "approval.pending", "approval": &told})
	n := webhookNote{id: a.ID, agent: a.Agent, payload: payload}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		w.log.Error("the gateway is closing; not telling the approval webhook of this approval", "approval_id", a.ID, "webhook", w.where)
		return
	}
	if w.queued[a.Agent] >= w.perAgent {
		w.log.Error("approval webhook has as many of this agent's approvals waiting to be told as one agent may; not telling it of this one",
			"approval_id", a.ID, "agent", a.Agent, "webhook", w.where, "waiting", w.perAgent)
		return
	}
	select {
	case w.queue <- n:
		w.queued[a.Agent]++
	default:
		w.log.Error("approval webhook has too many approvals waiting to be told; not telling it of this one", "approval_id", a.ID,
			"webhook", w.where, "waiting", webhookQueue)
	}
}

// release gives back the place in the queue an approval of agent took.
func (w *webhook) release(agent string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.queued[agent]--; w.queued[agent] <= 0 {
		delete(w.queued, agent)
	}
}

func (w *webhook) deliver(n webhookNote) {
	var err error
	for attempt := range 3 {
		if attempt > 0 {
			select {
			case <-w.ctx.Done():
			case <-time.After(time.Duration(attempt) * time.Second):
			}
		}
		if err = w.ctx.Err(); err != nil {
			break
		}
		if err = w.post(n); err == nil || final(err) {
			break
		}
	}
	if err == nil {
		return
	}
	w.log.Error("approval webhook failed; the call still waits", "approval_id", n.id, "webhook", w.where, "err", err)
}

// Close tells the webhook of the approvals queued until ctx ends, then
// ends the deliveries under way, and returns once the workers have.
func (w *webhook) Close(ctx context.Context) {
	w.mu.Lock()
	if !w.closed {
		w.closed = true
		close(w.queue)
	}
	w.mu.Unlock()
	done := make(chan struct{})
	go func() { w.workers.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		w.cancel()
		<-done
	}
	w.cancel()
}

// errWebhookRedirect is a webhook's redirect, which is not followed:
// net/http would send the webhook's URL, its secret path and query with
// it, as the Referer to wherever the redirect points, and the payload
// along.
var errWebhookRedirect = errors.New("webhook redirected; not followed")

// webhookStatus is a webhook's answer other than 2xx.
type webhookStatus struct {
	code   int
	status string
}

func (e *webhookStatus) Error() string { return "webhook answered " + e.status }

// final reports whether err is an answer that asking again would not
// change, which is not retried: a redirect, or a 4xx other than 408 and
// 429 (a revoked URL's 404, a receiver refusing the signature's 401).
func final(err error) bool {
	if s, ok := errors.AsType[*webhookStatus](err); ok {
		return s.code/100 == 4 && s.code != http.StatusRequestTimeout && s.code != http.StatusTooManyRequests
	}
	return errors.Is(err, errWebhookRedirect)
}

func refuseWebhookRedirect(*http.Request, []*http.Request) error { return errWebhookRedirect }

// post sends n to the webhook, signed if w has a key. Its errors do not
// quote the webhook's URL.
func (w *webhook) post(n webhookNote) error {
	req, err := http.NewRequestWithContext(w.ctx, http.MethodPost, w.url, bytes.NewReader(n.payload))
	if err != nil {
		return errors.New("invalid webhook URL")
	}
	req.Header.Set("Content-Type", "application/json")
	if w.key != nil {
		sign(req.Header, w.key, n.id, time.Now(), n.payload)
	}
	resp, err := w.client.Do(req)
	if err != nil {
		// A *url.Error quotes the whole URL; its cause does not.
		if ue, ok := errors.AsType[*url.Error](err); ok {
			return ue.Err
		}
		return err
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return &webhookStatus{resp.StatusCode, resp.Status}
	}
	return nil
}

// sign sets the headers of the Standard Webhooks specification
// (standardwebhooks.com) on a delivery of payload at now: webhook-id, the
// approval's id, the same on every attempt, so that a receiver can drop
// a repeat; webhook-timestamp, now in Unix seconds, with which it can
// refuse a replay; and webhook-signature, "v1," and the base64 of the
// HMAC-SHA256 under key of the id, the timestamp and payload, joined by
// dots. The libraries of that project verify it in most languages.
func sign(h http.Header, key []byte, id string, now time.Time, payload []byte) {
	ts := strconv.FormatInt(now.Unix(), 10)
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(id + "." + ts + "."))
	mac.Write(payload)
	h.Set("webhook-id", id)
	h.Set("webhook-timestamp", ts)
	h.Set("webhook-signature", "v1,"+base64.StdEncoding.EncodeToString(mac.Sum(nil)))
}
