package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	"github.com/amgateway/amg/authz"
	"github.com/amgateway/amg/internal/audit"
	"github.com/amgateway/amg/internal/policy"
	"github.com/amgateway/amg/internal/ratelimit"
	"github.com/amgateway/amg/internal/shadow"
	"github.com/amgateway/amg/internal/tokens"
)

// serveOptions are the flags of amg serve.
type serveOptions struct {
	policyDir   string
	dataDir     string
	authzListen string
	dev         bool
	devRole     string
	reload      time.Duration
}

func newServeCmd() *cobra.Command {
	var o serveOptions
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the gateway",
		Long: `Run the gateway with embedded defaults: policies from --policy-dir
(reloaded when they change; a policy that does not compile is reported and
the last good one stays), state in --data-dir (tokens, shadow counters, the
audit log and its keys), and the Envoy ext_authz service on --authz-listen.

This build serves the ext_authz service only; the standalone MCP endpoint
(front, broker and demo upstream) is not part of it yet.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return serve(cmd, o) },
	}
	f := cmd.Flags()
	f.StringVar(&o.policyDir, "policy-dir", "./policies", "directory of role files")
	f.StringVar(&o.dataDir, "data-dir", "./data", "directory for tokens, counters, the audit log and keys")
	f.StringVar(&o.authzListen, "authz-listen", "127.0.0.1:9001", "address of the ext_authz gRPC service")
	f.BoolVar(&o.dev, "dev", false, "issue a dev token (valid 24h) and print it on stdout")
	f.StringVar(&o.devRole, "dev-role", "notion_editor", "role of the --dev token")
	f.DurationVar(&o.reload, "reload-every", 2*time.Second, "how often to look for policy changes")
	return cmd
}

func serve(cmd *cobra.Command, o serveOptions) error {
	ctx := cmd.Context()
	log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))

	db, err := openDB(o.dataDir, true)
	if err != nil {
		return err
	}
	defer db.Close()
	tokenStore, err := tokens.NewSQLiteStore(db)
	if err != nil {
		return err
	}
	counter, err := shadow.NewSQLite(db)
	if err != nil {
		return err
	}
	auditKey, err := audit.LoadOrCreateKey(filepath.Join(o.dataDir, audit.KeyFileName))
	if err != nil {
		return err
	}
	// The decision key signs what authz hands the broker; every replica
	// of both must share it.
	decisionKey, err := audit.LoadOrCreateKey(filepath.Join(o.dataDir, "decision.key"))
	if err != nil {
		return err
	}
	signer, err := authz.NewSigner(decisionKey, nil)
	if err != nil {
		return err
	}
	device, err := audit.NewFileDevice(filepath.Join(o.dataDir, audit.FileName), &audit.FileOptions{Logger: log})
	if err != nil {
		return err
	}
	auditLog := audit.NewLogger([]audit.Device{device}, &audit.Options{Logger: log})
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := auditLog.Close(closeCtx); err != nil {
			log.Error("closing the audit log", "err", err)
		}
	}()

	policies := policy.NewLive(o.policyDir, nil)
	if err := policies.Reload(); err != nil {
		// Fail closed but keep serving: with no good policy everything is
		// denied, and a fixed policy directory is picked up by Watch.
		log.Error("policy does not compile; denying everything until it does", "dir", o.policyDir, "err", err)
	} else {
		log.Info("policy loaded", "dir", o.policyDir, "version", policies.Current().Version().String())
	}
	go policies.Watch(ctx, o.reload, func(st policy.Status) {
		if st.Err != nil {
			log.Error("policy reload failed; keeping the last good version", "version", st.Version.String(), "err", st.Err)
			return
		}
		log.Info("policy reloaded", "version", st.Version.String())
	})

	srv, err := authz.New(authz.Deps{
		Tokens:   tokens.NewAuthenticator(tokenStore, nil),
		Policies: policies,
		Limiter:  ratelimit.NewMemory(nil),
		Audit:    auditLog,
		Redactor: audit.NewRedactor(auditKey),
		Signer:   signer,
	}, &authz.Options{Shadow: counter, Logger: log})
	if err != nil {
		return err
	}

	if o.dev {
		secret, tok, err := tokens.Issue(ctx, tokenStore, "dev", o.devRole, 24*time.Hour, time.Now())
		if err != nil {
			return fmt.Errorf("issue dev token: %w", err)
		}
		log.Info("dev token issued", "id", tok.ID, "agent", tok.Agent, "role", tok.Role, "expires", tok.Expires.Format(time.RFC3339))
		fmt.Fprintln(cmd.OutOrStdout(), secret)
	}

	lis, err := net.Listen("tcp", o.authzListen)
	if err != nil {
		return err
	}
	gs := grpc.NewServer()
	authv3.RegisterAuthorizationServer(gs, srv)
	log.Info("ext_authz listening", "addr", lis.Addr().String())
	served := make(chan error, 1)
	go func() { served <- gs.Serve(lis) }()

	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down")
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		gs.Stop()
	}
	if err := <-served; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}
