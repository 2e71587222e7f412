package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/amgateway/amg/internal/approval"
)

// notifier returns what tells url of each new pending approval, or nil
// without a url: a JSON POST of the approval (never the request body,
// which may hold secrets), retried briefly, its failure logged. The call
// waits whether or not anyone was told.
func (g *Gateway) notifier(url string) func(*approval.Approval) {
	if url == "" {
		return nil
	}
	client := &http.Client{Timeout: 5 * time.Second}
	return func(a *approval.Approval) {
		payload, _ := json.Marshal(map[string]any{"event": "approval.pending", "approval": a})
		var err error
		for attempt := range 3 {
			if attempt > 0 {
				time.Sleep(time.Duration(attempt) * time.Second)
			}
			if err = post(client, url, payload); err == nil {
				return
			}
		}
		g.log.Error("approval webhook failed; the call still waits", "approval_id", a.ID, "err", err)
	}
}

func post(client *http.Client, url string, payload []byte) error {
	req, err := http.NewRequestWithContext(context.Background(), http.MethodPost, url, bytes.NewReader(payload))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("webhook answered %s", resp.Status)
	}
	return nil
}
