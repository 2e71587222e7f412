package main

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/spf13/cobra"

	"github.com/amgateway/amg/internal/config"
	"github.com/amgateway/amg/internal/demo"
)

func newDemoCmd() *cobra.Command {
	var listen string
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Serve the built-in demo MCP server on its own",
		Long: `Serve the built-in Notion-like demo MCP server over Streamable HTTP at /mcp,
without a gateway in front: an upstream for a gateway running elsewhere (the
docker compose setup runs it as its own container). It has no
authentication of its own; keep it where only the gateway reaches it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))
			srv := demo.NewServer(&demo.Options{Logger: log}).MCP()
			lis, err := net.Listen("tcp", listen)
			if err != nil {
				return err
			}
			mux := http.NewServeMux()
			mux.Handle(config.MCPPath, mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, nil))
			hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
			log.Info("demo MCP server serving", "url", "http://"+lis.Addr().String()+config.MCPPath)
			errs := make(chan error, 1)
			go func() { errs <- hs.Serve(lis) }()
			select {
			case err := <-errs:
				return err
			case <-cmd.Context().Done():
			}
			ctx, cancel := context.WithTimeout(context.WithoutCancel(cmd.Context()), 5*time.Second)
			defer cancel()
			if err := hs.Shutdown(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
				return err
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:9100", "address to serve on")
	return cmd
}
