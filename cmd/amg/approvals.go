package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/amgateway/amg/internal/admin"
	"github.com/amgateway/amg/internal/approval"
	"github.com/amgateway/amg/internal/console"
	"github.com/amgateway/amg/internal/gateway"
)

// approvalsOptions are the flags of amg approvals.
type approvalsOptions struct {
	url     string
	token   string
	dataDir string
}

func newApprovalsCmd() *cobra.Command {
	var o approvalsOptions
	cmd := &cobra.Command{
		Use:   "approvals",
		Short: "List and decide the calls waiting for a human",
		Long: `List and decide the calls parked for a human's approval, through a running
gateway's admin API. The admin token comes from --token, AMG_ADMIN_TOKEN, or
the admin.token file in --data-dir (which amg serve creates).`,
	}
	f := cmd.PersistentFlags()
	f.StringVar(&o.url, "admin-url", "http://127.0.0.1:8081", "the gateway's admin listener")
	f.StringVar(&o.token, "token", "", "the admin token (default $AMG_ADMIN_TOKEN, then DATA-DIR/admin.token)")
	f.StringVar(&o.dataDir, "data-dir", "./data", "the gateway's data directory, for its admin token")

	var state string
	list := &cobra.Command{
		Use:   "list",
		Short: "List approvals (pending ones by default)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out []approval.Approval
			if err := o.do(cmd, "GET", "/api/v1/approvals?state="+url.QueryEscape(state), nil, &out); err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 0, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tSTATE\tAGENT\tROLE\tCALL\tCREATED\tEXPIRES")
			hidden := false
			for _, a := range out {
				agent, h1 := console.Visible(a.Agent)
				role, h2 := console.Visible(a.Role)
				call, h3 := console.Visible(a.Server + "__" + a.Tool)
				hidden = hidden || h1 || h2 || h3
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", a.ID, a.State, agent, role, call,
					a.Created.Format(time.RFC3339), a.Expires.Format(time.RFC3339))
			}
			if err := w.Flush(); err != nil {
				return err
			}
			warnHidden(cmd, hidden)
			return nil
		},
	}
	list.Flags().StringVar(&state, "state", "pending", approval.StateList()+", or empty for all")
	show := &cobra.Command{
		Use:   "show ID",
		Short: "Show one approval",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var a json.RawMessage
			if err := o.do(cmd, "GET", "/api/v1/approvals/"+url.PathEscape(args[0]), nil, &a); err != nil {
				return err
			}
			// An agent could show an approver one request and send
			// another, with characters that hide or reorder text, and a
			// terminal obeys the escape sequences it prints. Written as
			// JSON escapes, they leave the output JSON that decodes to
			// what the API answered.
			text, hidden := console.VisibleJSON(string(a))
			if _, err := io.WriteString(cmd.OutOrStdout(), text); err != nil {
				return err
			}
			warnHidden(cmd, hidden)
			return nil
		},
	}
	decide := func(verb string) *cobra.Command {
		var by, reason string
		c := &cobra.Command{
			Use:   verb + " ID",
			Short: strings.ToUpper(verb[:1]) + verb[1:] + " a pending call",
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				if by == "" {
					by = os.Getenv("USER")
				}
				var a approval.Approval
				req := map[string]string{"by": by, "reason": reason}
				if err := o.do(cmd, "POST", "/api/v1/approvals/"+url.PathEscape(args[0])+"/"+verb, req, &a); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s %s by %s\n", a.ID, a.State, a.DecidedBy)
				return nil
			},
		}
		c.Flags().StringVar(&by, "by", "", "who decides, for the audit log (default $USER)")
		c.Flags().StringVar(&reason, "reason", "", "why, for the audit log and the agent")
		return c
	}
	cmd.AddCommand(list, show, decide("approve"), decide("deny"))
	return cmd
}

// warnHidden says on stderr, if hidden, that what was printed holds
// characters written as their escapes (see console.Visible).
func warnHidden(cmd *cobra.Command, hidden bool) {
	if hidden {
		fmt.Fprintln(cmd.ErrOrStderr(), `warning: characters that would not show, or would reorder the text around them, are written as their escapes (such as \u202e)`)
	}
}

// maxAdminAnswer is the most of an admin API answer amg approvals reads.
const maxAdminAnswer = 16 << 20

// do calls the admin API and decodes its JSON answer into out.
func (o approvalsOptions) do(cmd *cobra.Command, method, path string, in, out any) error {
	token, err := o.adminToken()
	if err != nil {
		return err
	}
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(cmd.Context(), method, strings.TrimSuffix(o.url, "/")+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAdminAnswer+1))
	if err != nil {
		return err
	}
	if len(data) > maxAdminAnswer {
		// Cut, it would print a request without its end, or fail to decode.
		return fmt.Errorf("admin API: the answer is over %d MiB, more than amg approvals reads; read it with curl, or in the console", maxAdminAnswer>>20)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			return fmt.Errorf("%s", e.Error)
		}
		return fmt.Errorf("admin API: %s", resp.Status)
	}
	if raw, ok := out.(*json.RawMessage); ok {
		*raw = data
		return nil
	}
	return json.Unmarshal(data, out)
}

func (o approvalsOptions) adminToken() (string, error) {
	if o.token != "" {
		return o.token, nil
	}
	if t := os.Getenv("AMG_ADMIN_TOKEN"); t != "" {
		return t, nil
	}
	path := filepath.Join(o.dataDir, gateway.AdminTokenFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("no admin token: pass --token, set AMG_ADMIN_TOKEN, or point --data-dir at the gateway's data directory (no %s)", path)
	}
	if err != nil {
		return "", err
	}
	tok := strings.TrimSpace(string(data))
	if !strings.HasPrefix(tok, admin.TokenPrefix) {
		return "", fmt.Errorf("%s does not hold an admin token", path)
	}
	return tok, nil
}
