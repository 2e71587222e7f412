package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/spf13/cobra"

	"github.com/amgateway/amg/internal/console"
)

// clientOptions are the flags of amg client.
type clientOptions struct {
	url   string
	token string
}

func newClientCmd() *cobra.Command {
	var o clientOptions
	cmd := &cobra.Command{
		Use:   "client",
		Short: "Talk to a gateway as an agent does, with an MCP client",
		Long: `Talk to an MCP endpoint as an agent does: an MCP client (the go-sdk's) over
Streamable HTTP, with the agent's token as a bearer token. The token comes
from --token or the AMG_TOKEN environment variable.

  amg client tools
  amg client call notion__get_pages '{"workspace_id":"ws_abc123","limit":2}'

A call the gateway denies prints the JSON-RPC error the agent gets, and
exits 1.`,
	}
	f := cmd.PersistentFlags()
	f.StringVar(&o.url, "url", "http://127.0.0.1:8080/mcp", "the MCP endpoint")
	f.StringVar(&o.token, "token", "", "the agent's token (default $AMG_TOKEN)")
	cmd.AddCommand(&cobra.Command{
		Use:   "tools",
		Short: "List the tools the token's role may see",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cs, err := o.connect(cmd)
			if err != nil {
				return err
			}
			defer cs.Close()
			for tool, err := range cs.Tools(cmd.Context(), nil) {
				if err != nil {
					return rpcFailure(cmd, err)
				}
				// Both come from upstream servers: their escapes would
				// reach the terminal (OSC 52 sets the clipboard).
				name, _ := console.Visible(tool.Name)
				desc, _ := console.Visible(firstLine(tool.Description))
				fmt.Fprintf(cmd.OutOrStdout(), "%s\t%s\n", name, desc)
			}
			return nil
		},
	}, &cobra.Command{
		Use:   "call TOOL [ARGUMENTS-JSON]",
		Short: "Call a tool and print its result",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			arguments := json.RawMessage(`{}`)
			if len(args) == 2 {
				if !json.Valid([]byte(args[1])) {
					return fmt.Errorf("arguments are not valid JSON: %s", args[1])
				}
				arguments = json.RawMessage(args[1])
			}
			cs, err := o.connect(cmd)
			if err != nil {
				return err
			}
			defer cs.Close()
			res, err := cs.CallTool(cmd.Context(), &mcp.CallToolParams{Name: args[0], Arguments: arguments})
			if err != nil {
				return rpcFailure(cmd, err)
			}
			out, _ := json.MarshalIndent(res, "", "  ")
			fmt.Fprintln(cmd.OutOrStdout(), string(out))
			if res.IsError {
				return exitError{code: 1}
			}
			return nil
		},
	})
	return cmd
}

func (o clientOptions) connect(cmd *cobra.Command) (*mcp.ClientSession, error) {
	token := o.token
	if token == "" {
		token = os.Getenv("AMG_TOKEN")
	}
	if token == "" {
		return nil, errors.New("no token: pass --token or set AMG_TOKEN")
	}
	transport := &mcp.StreamableClientTransport{Endpoint: o.url,
		HTTPClient: &http.Client{Transport: bearerToken(token), CheckRedirect: sameOrigin}}
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "amg-client", Version: version}, nil).Connect(cmd.Context(), transport, nil)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", o.url, err)
	}
	return cs, nil
}

// sameOrigin refuses a redirect that leaves the endpoint's scheme and
// host: bearerToken sets the token on every request, below net/http's
// redirect handling, which would otherwise drop it there.
func sameOrigin(r *http.Request, via []*http.Request) error {
	if u := via[0].URL; r.URL.Scheme != u.Scheme || r.URL.Host != u.Host {
		return fmt.Errorf("the endpoint redirected to %s://%s; not followed, so that the token stays with %s://%s",
			r.URL.Scheme, r.URL.Host, u.Scheme, u.Host)
	}
	if len(via) >= 10 {
		return errors.New("stopped after 10 redirects")
	}
	return nil
}

// bearerToken adds the agent's token to every request.
type bearerToken string

func (t bearerToken) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+string(t))
	return http.DefaultTransport.RoundTrip(r)
}

// rpcFailure prints a JSON-RPC error as the agent got it and exits 1.
func rpcFailure(cmd *cobra.Command, err error) error {
	var rpcErr *jsonrpc.Error
	if !errors.As(err, &rpcErr) {
		return err
	}
	out, _ := json.MarshalIndent(rpcErr, "", "  ")
	fmt.Fprintln(cmd.ErrOrStderr(), string(out))
	return exitError{code: 1}
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}
