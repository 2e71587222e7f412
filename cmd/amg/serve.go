package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/amgateway/amg/internal/config"
	"github.com/amgateway/amg/internal/demo"
	"github.com/amgateway/amg/internal/gateway"
	"github.com/amgateway/amg/internal/policy"
	"github.com/amgateway/amg/internal/secrets"
	"github.com/amgateway/amg/policies"
	"github.com/amgateway/amg/xds"
)

// serveOptions are the flags of amg serve; empty ones keep the config's
// value.
type serveOptions struct {
	config       string
	listen       string
	adminListen  string
	authzListen  string
	brokerListen string
	xdsListen    string
	policyDir    string
	dataDir      string
	dev          bool
	devRole      string
	reload       time.Duration
}

func newServeCmd() *cobra.Command {
	var o serveOptions
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the gateway",
		Long: `Run the gateway. With no config file it runs on embedded defaults: the MCP
endpoint on http://127.0.0.1:8080/mcp fronting the built-in demo server (as
upstream "notion"), the admin endpoints on http://127.0.0.1:8081 (the web
console, /healthz, /readyz, /api/v1/*, /metrics), the ext_authz gRPC
service on 127.0.0.1:9001, policies from ./policies (reloaded when they
change; a policy that does not compile is reported and the last good one
stays), and state under ./data. Where
./policies does not exist, it is created holding the example roles.

--config reads a gateway config file (amg.yaml); every problem in it is
reported with file:line:col and the server does not start. Flags override
the file.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cmd.Flags().Changed("dev-role") && !o.dev {
				return errors.New("--dev-role is the role of the --dev token: give --dev too")
			}
			return serve(cmd, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.config, "config", "", "gateway config file (default: embedded defaults)")
	f.StringVar(&o.listen, "listen", "", "address of the MCP endpoint (default 127.0.0.1:8080)")
	f.StringVar(&o.adminListen, "admin-listen", "", "address of the admin endpoints: the web console, /healthz, /readyz, /api/v1/*, /metrics (default 127.0.0.1:8081)")
	f.StringVar(&o.brokerListen, "broker-listen", "", "Envoy mode: address of the broker, where Envoy routes allowed requests (default off)")
	f.StringVar(&o.xdsListen, "xds-listen", "", "Envoy mode: address of the xDS (ADS) server that configures Envoy (default off)")
	f.StringVar(&o.authzListen, "authz-listen", "", "address of the ext_authz gRPC service (default 127.0.0.1:9001)")
	f.StringVar(&o.policyDir, "policy-dir", "", "directory of role files (default ./policies)")
	f.StringVar(&o.dataDir, "data-dir", "", "directory for tokens, counters, the audit log and keys (default ./data)")
	f.BoolVar(&o.dev, "dev", false, "issue a token for this run and print it alone on stdout: revoked at shutdown, valid 24h after a crash (not with a config's redis)")
	f.StringVar(&o.devRole, "dev-role", "notion_editor", "role of the --dev token, which the policy must define")
	f.DurationVar(&o.reload, "reload-every", 2*time.Second, "how often to look for policy changes")
	return cmd
}

func serve(cmd *cobra.Command, o serveOptions) error {
	ctx := cmd.Context()
	log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))
	cfg := config.Default()
	report := func(problems config.Problems) error {
		for _, p := range problems {
			fmt.Fprintln(cmd.ErrOrStderr(), p)
		}
		fmt.Fprintf(cmd.ErrOrStderr(), "%d problem%s in %s; not starting\n", len(problems), plural(len(problems)), o.config)
		return exitError{code: 1}
	}
	// Every secret reference is resolved once before starting (and again
	// at each upstream connection): a missing credential stops the start.
	// env: and file: ones, Vault's own credentials among them, are
	// checked with the file, so that each problem is reported with its
	// place and with the others; vault: ones once Vault is reached.
	base := secrets.NewDefault(nil)
	if o.config != "" {
		var err error
		cfg, err = config.Load(o.config, &config.Options{Secrets: base, SkipVault: true})
		var problems config.Problems
		if errors.As(err, &problems) {
			return report(problems)
		}
		if err != nil {
			return err
		}
	}
	// Every replica sharing a Redis would honour the dev token, and a
	// crash would leave it valid on all of them.
	if o.dev && cfg.Redis.Address != "" {
		return fmt.Errorf("--dev: every replica sharing the Redis that %s names would honour the dev token; issue a token with amg token issue --redis instead", o.config)
	}
	src, closeSecrets, err := secretSource(ctx, cfg, base, log)
	var problems config.Problems
	if errors.As(err, &problems) {
		return report(problems)
	} else if err != nil {
		return err
	}
	defer closeSecrets()
	if err := cfg.CheckSecrets(ctx, src); errors.As(err, &problems) {
		return report(problems)
	} else if err != nil {
		return err
	}
	for _, ov := range []struct {
		dst *string
		v   string
	}{
		{&cfg.Listen, o.listen}, {&cfg.AdminListen, o.adminListen}, {&cfg.AuthzListen, o.authzListen}, {&cfg.BrokerListen, o.brokerListen}, {&cfg.XDSListen, o.xdsListen}, {&cfg.PolicyDir, o.policyDir}, {&cfg.DataDir, o.dataDir},
	} {
		if ov.v != "" {
			*ov.dst = ov.v
		}
	}
	// The file's listeners were checked as it loaded; the flags may move
	// one onto another, or, with an xDS server that tells Envoy where
	// authz and the broker listen, to a port picked at start.
	if err := cfg.CheckListeners(); err != nil {
		return err
	}
	// What Envoy is told was checked with the file, each problem at its
	// line; it is built here once more, flags applied, so that whatever
	// the xDS server would still refuse stops serve before the gateway
	// opens its data directory.
	if cfg.XDSListen != "" {
		res, err := xds.Build(cfg)
		if err != nil {
			return err
		}
		if err := res.Validate(); err != nil {
			return fmt.Errorf("invalid envoy config: %w", err)
		}
	}
	// On embedded defaults the gateway starts from the example roles; a
	// policy directory someone named is used as it is, or refused.
	if o.config == "" && o.policyDir == "" {
		if err := seedPolicies(cfg.PolicyDir, log); err != nil {
			return err
		}
	}

	gw, err := gateway.New(cfg, &gateway.Options{
		Secrets:      src,
		Builtins:     gateway.Builtins{"demo": demo.NewServer(&demo.Options{Logger: log}).MCP()},
		PolicyReload: o.reload,
		ConfigFile:   o.config,
		Version:      version,
		Logger:       log,
		Stdout:       cmd.OutOrStdout(),
	})
	if err != nil {
		return err
	}
	defer gw.Close()
	// A token for a role the policy does not define would be denied
	// everything, for 24 hours: refuse it, as amg token issue does, before
	// taking any port. A policy that does not compile denies everything
	// until it does, and has nothing to check against.
	if o.dev {
		if set, err := policy.LoadDir(cfg.PolicyDir, &policy.Options{Servers: cfg.Names}); err == nil {
			if err := roleDefined(set, cfg.PolicyDir, o.devRole); err != nil {
				return fmt.Errorf("--dev-role: %w", err)
			}
		} else {
			log.Warn("--dev-role not checked: the policy does not compile", "role", o.devRole)
		}
	}
	if err := gw.Listen(); err != nil {
		return err
	}
	if !o.dev {
		return gw.Serve(ctx)
	}
	secret, tok, err := gw.IssueToken(ctx, "dev", o.devRole, 24*time.Hour)
	if err != nil {
		return fmt.Errorf("issue dev token: %w", err)
	}
	log.Info("dev token issued", "id", tok.ID, "agent", tok.Agent, "role", tok.Role, "expires", tok.Expires.Format(time.RFC3339))
	fmt.Fprintln(cmd.OutOrStdout(), secret)
	// The dev token is this run's: it is revoked when the gateway shuts
	// down. A crash leaves it valid in the data directory until it
	// expires.
	err = gw.Serve(ctx)
	revoke, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if rerr := gw.RevokeToken(revoke, tok.ID); rerr != nil {
		return errors.Join(err, fmt.Errorf("revoke dev token %s (it expires %s): %w", tok.ID, tok.Expires.Format(time.RFC3339), rerr))
	}
	log.Info("dev token revoked", "id", tok.ID)
	return err
}

// seedPolicies writes the example roles into dir if dir does not exist.
func seedPolicies(dir string, log *slog.Logger) error {
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := os.CopyFS(dir, policies.Examples); err != nil {
		return fmt.Errorf("write the example policies: %w", err)
	}
	log.Info("no policy directory; wrote the example roles into it", "dir", dir)
	return nil
}

// secretSource is base for env: and file: references, and Vault for
// vault: ones when the config has a vault section; Vault's own credentials
// come from env: or file:, and are read again whenever Vault needs them,
// so that a rotated secret ID or a rewritten token file is picked up.
// Vault refusing them, or not answering, is a problem of the vault section.
func secretSource(ctx context.Context, cfg *config.Config, base secrets.Source, log *slog.Logger) (secrets.Source, func(), error) {
	vc := cfg.Vault
	if vc.Address == "" {
		return base, func() {}, nil
	}
	opts := secrets.VaultOptions{Address: vc.Address, CacheTTL: vc.CacheTTL, Logger: log}
	cred, path := vc.Token, "vault.token"
	if cred.String() == "" {
		cred, path = vc.AppRoleSecretID, "vault.approle.secret_id"
	}
	expand := func(ctx context.Context) (secrets.Secret, error) {
		s, err := cred.Expand(ctx, base)
		if err != nil {
			return secrets.Secret{}, fmt.Errorf("%s: %w", path, err)
		}
		return s, nil
	}
	first, err := expand(ctx)
	if err != nil {
		return nil, nil, err
	}
	if len(cred.Refs()) > 0 {
		opts.Credential = expand
	}
	if vc.Token.String() != "" {
		opts.Token = first
	} else {
		opts.AppRole = &secrets.VaultAppRole{RoleID: vc.AppRoleID, SecretID: first, Mount: vc.AppRoleMount}
	}
	v, err := secrets.NewVault(ctx, opts)
	if err != nil {
		if ctx.Err() != nil {
			return nil, nil, err
		}
		return nil, nil, config.Problems{{Pos: vc.Pos, Path: "vault", Msg: err.Error()}}
	}
	return secrets.NewDefault(&secrets.Options{Vault: v}), func() { v.Close() }, nil
}
