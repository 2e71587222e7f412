package secrets

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/vault/api"
	"golang.org/x/sync/singleflight"
)

// Vault cache and timeout bounds.
const (
	// DefaultVaultCacheTTL is how long a value read from Vault is reused
	// when VaultOptions.CacheTTL is zero.
	DefaultVaultCacheTTL = 30 * time.Second
	// MaxVaultCacheTTL bounds VaultOptions.CacheTTL: the cache TTL is how
	// long a rotated secret can go unused, and rotation should take effect
	// within minutes, not hours.
	MaxVaultCacheTTL = 10 * time.Minute
	// DefaultVaultTimeout bounds each call to Vault when
	// VaultOptions.Timeout is zero.
	DefaultVaultTimeout = 10 * time.Second
	// reloginPause is how long after a failed login a read that finds
	// the token dead waits before it tries another, so that reads
	// against a Vault that refuses the credential cost it one login
	// every few seconds rather than one each.
	reloginPause = 5 * time.Second
)

// VaultAppRole holds the credentials of an AppRole login: the role ID
// names the role and is not secret by itself; the secret ID is.
type VaultAppRole struct {
	RoleID   string
	SecretID Secret
	// Mount is the path the AppRole auth method is enabled at; empty
	// means "approle".
	Mount string
}

// VaultOptions configure NewVault. Exactly one of Token and AppRole is set.
//
// TLS settings (a private CA, a client certificate) come from the standard
// VAULT_CACERT, VAULT_CAPATH, VAULT_CLIENT_CERT, VAULT_CLIENT_KEY and
// VAULT_TLS_SERVER_NAME environment variables, as for the vault CLI.
// VAULT_ADDR, VAULT_AGENT_ADDR and VAULT_TOKEN are ignored: the address and
// credentials are the ones given here, so that errors name the Vault that
// was actually asked.
type VaultOptions struct {
	// Address is Vault's base URL, such as https://vault.example:8200.
	Address string
	// Token authenticates with a Vault token. A renewable token is renewed
	// for as long as the Vault source is open.
	Token Secret
	// AppRole authenticates with an AppRole login; the token it yields is
	// renewed while possible, and a new login is made when it cannot be.
	AppRole *VaultAppRole
	// Credential, when not nil, reads the token or the AppRole secret ID,
	// whichever is set, afresh: for a credential that changes while the
	// source is open, such as a secret ID an orchestrator rotates or a
	// token file a Vault Agent rewrites. Token or AppRole.SecretID is the
	// one used at start; Credential is called at every later AppRole
	// login and, with a token, when the token can no longer be renewed
	// or Vault refuses it. Its errors must not contain the credential.
	Credential func(ctx context.Context) (Secret, error)
	// CacheTTL is how long a value read from Vault is reused before it is
	// read again: 0 means DefaultVaultCacheTTL; at most MaxVaultCacheTTL.
	// A rotated secret is therefore used by upstream connections made
	// CacheTTL after the rotation at the latest.
	CacheTTL time.Duration
	// Timeout bounds each call to Vault, retries included: 0 means
	// DefaultVaultTimeout.
	Timeout time.Duration
	// Logger receives login and token renewal events; nil discards them.
	// Nothing logged contains a secret value or a token.
	Logger *slog.Logger
	// Now is the clock of the cache; nil means time.Now. Token renewal
	// runs on real time regardless, since Vault's token TTLs do.
	Now func() time.Time
}

// Vault resolves vault:PATH#FIELD references by reading KV version 2
// secrets. PATH is the path of the HTTP API read, with the data/ segment
// that follows the mount, exactly as Vault policies name it: for
// vault:kv/data/amg/notion#token it reads GET /v1/kv/data/amg/notion and
// returns the field token of the latest version. A path without data/ is
// not rewritten: where the mount ends is not knowable without extra
// permissions, and a reference that matches the policy line granting it
// is easier to check; errors for such paths say how to write them.
//
// Values are cached per reference for the cache TTL, and concurrent
// resolutions of a reference the cache lacks share one read, so that a
// burst of upstream connections costs one Vault read; a value is never
// served after its TTL, even when Vault cannot be reached then.
//
// A Vault is safe for concurrent use. Close it to stop token renewal.
type Vault struct {
	client     *api.Client
	login      *api.Client // has no token: AppRole logins go through it
	addr       string
	appRole    *VaultAppRole
	credential func(context.Context) (Secret, error)
	cacheTTL   time.Duration
	timeout    time.Duration
	log        *slog.Logger
	now        func() time.Time

	mu     sync.Mutex
	cache  map[Ref]cachedValue
	closed bool
	// reads joins concurrent reads of one reference, by its text.
	reads singleflight.Group

	// loginMu serialises the getting of new tokens (AppRole logins, or
	// the token read again); gen counts them, so that a read denied with
	// an old token does not get another after another caller already
	// has. loginErr is the last attempt's error, made at loginFailed,
	// nil once one succeeds.
	loginMu     sync.Mutex
	gen         atomic.Uint64
	loginErr    error
	loginFailed time.Time
	// newAuth hands a token obtained outside the renewal loop to it.
	newAuth chan *api.SecretAuth

	stop context.CancelFunc
	done chan struct{}
}

type cachedValue struct {
	value   Secret
	expires time.Time
}

var _ Source = (*Vault)(nil)

// NewVault checks opts and connects to Vault: it logs in with the AppRole
// or looks the token up, so that a wrong address or credential fails at
// startup rather than at the first upstream connection. It then renews the
// token in the background until Close.
func NewVault(ctx context.Context, opts VaultOptions) (*Vault, error) {
	addr, err := checkVaultOptions(&opts)
	if err != nil {
		return nil, err
	}
	client, err := newVaultClient(addr, opts.Timeout)
	if err != nil {
		return nil, err
	}
	loginClient, err := newVaultClient(addr, opts.Timeout)
	if err != nil {
		return nil, err
	}
	loginClient.ClearToken()
	// No retries: Vault 1.13 answers a wrong secret ID with HTTP 500,
	// which the client would retry until the timeout hid the cause. The
	// renewal loop retries failed logins with its own backoff.
	loginClient.SetMaxRetries(0)
	if opts.AppRole == nil {
		client.SetToken(opts.Token.Reveal())
	} else {
		client.ClearToken()
	}
	v := &Vault{
		client:     client,
		login:      loginClient,
		addr:       addr,
		appRole:    opts.AppRole,
		credential: opts.Credential,
		cacheTTL:   opts.CacheTTL,
		timeout:    opts.Timeout,
		log:        opts.Logger,
		now:        opts.Now,
		cache:      make(map[Ref]cachedValue),
		newAuth:    make(chan *api.SecretAuth, 1),
		done:       make(chan struct{}),
	}
	if v.log == nil {
		v.log = slog.New(slog.DiscardHandler)
	}
	v.log = v.log.With("vault", addr)
	if v.now == nil {
		v.now = time.Now
	}
	if skip, _ := strconv.ParseBool(os.Getenv(api.EnvVaultSkipVerify)); skip && strings.HasPrefix(addr, "https:") {
		v.log.Warn("VAULT_SKIP_VERIFY is set: Vault's TLS certificate is not verified")
	}

	var auth *api.SecretAuth
	if v.appRole != nil {
		if auth, err = v.doLogin(ctx, v.appRole.SecretID); err != nil {
			return nil, err
		}
	} else if auth, err = v.lookupToken(ctx, v.client); err != nil {
		return nil, err
	}
	runCtx, stop := context.WithCancel(context.Background())
	v.stop = stop
	go v.run(runCtx, auth)
	return v, nil
}

// checkVaultOptions fills defaults into opts and returns the normalised
// address.
func checkVaultOptions(opts *VaultOptions) (string, error) {
	if opts.Address == "" {
		return "", errors.New("vault address is required")
	}
	u, err := url.Parse(opts.Address)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" {
		return "", fmt.Errorf("vault address %q is not an http or https URL", opts.Address)
	}
	if u.User != nil {
		// It would be printed in every error naming the address.
		return "", errors.New("vault address must not contain credentials")
	}
	if u.RawQuery != "" || u.ForceQuery || u.Fragment != "" {
		return "", fmt.Errorf("vault address %q must not have a query or fragment", opts.Address)
	}
	addr := strings.TrimSuffix(u.String(), "/")

	hasToken := opts.Token.p != nil
	switch {
	case hasToken && opts.AppRole != nil:
		return "", errors.New("vault options set both a token and an AppRole; choose one")
	case !hasToken && opts.AppRole == nil:
		return "", errors.New("vault options need a token or an AppRole")
	case hasToken && opts.Token.Reveal() == "":
		return "", errors.New("vault token is empty")
	case opts.AppRole != nil:
		r := *opts.AppRole
		if r.RoleID == "" {
			return "", errors.New("vault AppRole has no role ID")
		}
		if r.SecretID.Reveal() == "" {
			return "", errors.New("vault AppRole has no secret ID")
		}
		if r.Mount == "" {
			r.Mount = "approle"
		}
		r.Mount = strings.Trim(r.Mount, "/")
		if err := checkVaultPath(r.Mount); err != nil {
			return "", fmt.Errorf("vault AppRole mount %q %w", r.Mount, err)
		}
		opts.AppRole = &r // a copy: the caller's may change later
	}

	switch {
	case opts.CacheTTL < 0:
		return "", fmt.Errorf("vault cache TTL %s is negative", opts.CacheTTL)
	case opts.CacheTTL == 0:
		opts.CacheTTL = DefaultVaultCacheTTL
	case opts.CacheTTL > MaxVaultCacheTTL:
		return "", fmt.Errorf("vault cache TTL %s is longer than the maximum %s, which bounds how long a rotated secret goes unused",
			opts.CacheTTL, MaxVaultCacheTTL)
	}
	switch {
	case opts.Timeout < 0:
		return "", fmt.Errorf("vault timeout %s is negative", opts.Timeout)
	case opts.Timeout == 0:
		opts.Timeout = DefaultVaultTimeout
	}
	return addr, nil
}

func newVaultClient(addr string, timeout time.Duration) (*api.Client, error) {
	cfg := api.DefaultConfig()
	if cfg.Error != nil {
		return nil, fmt.Errorf("vault client configuration: %w", cfg.Error)
	}
	cfg.Address = addr
	cfg.AgentAddress = ""
	cfg.Timeout = timeout
	c, err := api.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("vault client for %s: %w", addr, err)
	}
	return c, nil
}

// Resolve returns the field of the KV version 2 secret ref names, from the
// cache while its TTL lasts.
func (v *Vault) Resolve(ctx context.Context, ref Ref) (Secret, error) {
	if err := ctx.Err(); err != nil {
		return Secret{}, err
	}
	if _, err := ParseRef(ref.String()); err != nil {
		return Secret{}, err
	}
	if ref.Scheme != SchemeVault {
		return Secret{}, fmt.Errorf("%s: not a vault reference", ref)
	}
	path, field, _ := strings.Cut(ref.Path, "#")
	if err := checkVaultPath(path); err != nil {
		return Secret{}, fmt.Errorf("%s: path %w", ref, err)
	}

	if s, ok, err := v.cached(ref); ok || err != nil {
		return s, err
	}
	// The read is shared, so no one caller's cancellation may end it:
	// it runs without the caller's cancellation, bounded by the Vault
	// timeout, and each caller stops waiting when its own context ends.
	// A reference read meanwhile is taken from the cache, so a caller
	// that just missed a read does not make another.
	ch := v.reads.DoChan(ref.String(), func() (any, error) {
		if s, ok, err := v.cached(ref); ok || err != nil {
			return s, err
		}
		now := v.now()
		data, err := v.read(context.WithoutCancel(ctx), ref, path)
		if err != nil {
			return nil, err
		}
		s, err := kvField(ref, path, field, data)
		if err != nil {
			return nil, err
		}
		v.mu.Lock()
		if !v.closed {
			// From the time before the read, so no value outlives its TTL.
			v.cache[ref] = cachedValue{value: s, expires: now.Add(v.cacheTTL)}
		}
		v.mu.Unlock()
		return s, nil
	})
	select {
	case <-ctx.Done():
		return Secret{}, fmt.Errorf("%s: reading from Vault at %s: %w", ref, v.addr, ctx.Err())
	case r := <-ch:
		if r.Err != nil {
			return Secret{}, r.Err
		}
		return r.Val.(Secret), nil
	}
}

// cached returns ref's value while its TTL lasts (ok), and fails once the
// source is closed.
func (v *Vault) cached(ref Ref) (s Secret, ok bool, err error) {
	now := v.now()
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return Secret{}, false, fmt.Errorf("%s: the vault source is closed", ref)
	}
	if c, ok := v.cache[ref]; ok {
		if now.Before(c.expires) {
			return c.value, true, nil
		}
		delete(v.cache, ref)
	}
	return Secret{}, false, nil
}

// checkVaultPath refuses paths the client would rewrite: it cleans them,
// so kv/data/../../sys/x would read sys/x.
func checkVaultPath(p string) error {
	for _, seg := range strings.Split(p, "/") {
		switch seg {
		case "":
			return errors.New("has an empty segment (a leading, trailing or doubled '/')")
		case ".", "..":
			return errors.New("has a '.' or '..' segment")
		}
	}
	return nil
}

// read returns the data of the secret at path, nil if there is none. With
// an AppRole, or a token its Credential can read again, a read denied
// because the token died meanwhile (the machine slept past its TTL,
// someone revoked it) gets a new token and retries once.
func (v *Vault) read(ctx context.Context, ref Ref, path string) (map[string]any, error) {
	gen := v.gen.Load()
	sec, err := v.readOnce(ctx, path)
	if err != nil && (v.appRole != nil || v.credential != nil) && isDenied(err) && !v.tokenAlive(ctx) {
		if lerr := v.relogin(ctx, gen); lerr != nil {
			v.log.Warn("getting a new vault token after a denied read failed", "ref", ref.String(), "error", lerr.Error())
		} else {
			sec, err = v.readOnce(ctx, path)
		}
	}
	if err != nil {
		return nil, v.readErr(ref, path, err)
	}
	if sec == nil || len(sec.Data) == 0 {
		return nil, &notFoundError{msg: fmt.Sprintf("%s does not exist in Vault at %s%s", ref, v.addr, kvHint(path))}
	}
	return sec.Data, nil
}

func (v *Vault) readOnce(ctx context.Context, path string) (*api.Secret, error) {
	ctx, cancel := context.WithTimeout(ctx, v.timeout)
	defer cancel()
	return v.client.Logical().ReadWithContext(ctx, path)
}

// tokenAlive reports whether Vault still accepts the current token, to
// tell a dead token from a policy that does not grant the read. When
// unsure it says yes, so that no login is made.
func (v *Vault) tokenAlive(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, v.timeout)
	defer cancel()
	_, err := v.client.Auth().Token().LookupSelfWithContext(ctx)
	return !isDenied(err)
}

// kvField picks field out of a KV version 2 read response.
func kvField(ref Ref, path, field string, data map[string]any) (Secret, error) {
	inner, hasData := data["data"]
	_, hasMeta := data["metadata"]
	if !hasData || !hasMeta {
		return Secret{}, fmt.Errorf("%s: not a KV version 2 secret (the response has no data and metadata)%s", ref, kvHint(path))
	}
	if inner == nil {
		// The latest version was deleted or destroyed; metadata remains.
		return Secret{}, &notFoundError{msg: fmt.Sprintf("%s: the latest version of the secret is deleted", ref)}
	}
	fields, ok := inner.(map[string]any)
	if !ok {
		return Secret{}, fmt.Errorf("%s: not a KV version 2 secret (its data is not an object)", ref)
	}
	raw, ok := fields[field]
	if !ok {
		return Secret{}, &notFoundError{msg: fmt.Sprintf("%s: the secret has no field %q", ref, field)}
	}
	var s string
	switch x := raw.(type) {
	case string:
		s = x
	case json.Number:
		s = x.String()
	case nil:
		return Secret{}, &notFoundError{msg: fmt.Sprintf("%s: field %q is null", ref, field)}
	default:
		// Never the value: a nested object may hold other credentials.
		return Secret{}, fmt.Errorf("%s: field %q is %s, not a string", ref, field, jsonKind(raw))
	}
	if s == "" {
		return Secret{}, &notFoundError{msg: fmt.Sprintf("%s: field %q is empty", ref, field)}
	}
	return New(s), nil
}

func jsonKind(v any) string {
	switch v.(type) {
	case bool:
		return "a boolean"
	case []any:
		return "a list"
	case map[string]any:
		return "an object"
	}
	return "a non-string value"
}

// kvHint explains KV version 2 paths when path lacks the data/ segment.
func kvHint(path string) string {
	for _, seg := range strings.Split(path, "/") {
		if seg == "data" {
			return ""
		}
	}
	return " (KV version 2 paths have data/ after the mount: kv/data/amg/notion for the secret amg/notion on the mount kv)"
}

// vaultError has a message written for operators and wraps the client's
// error, whose own text spans lines and repeats the request URL.
type vaultError struct {
	msg string
	err error
}

func (e *vaultError) Error() string { return e.msg }
func (e *vaultError) Unwrap() error { return e.err }

func isDenied(err error) bool {
	var re *api.ResponseError
	return errors.As(err, &re) && re.StatusCode == http.StatusForbidden
}

func (v *Vault) readErr(ref Ref, path string, err error) error {
	var re *api.ResponseError
	if errors.As(err, &re) && re.StatusCode == http.StatusForbidden {
		return &vaultError{err: err, msg: fmt.Sprintf(
			"%s: Vault at %s denied reading %s (permission denied): the token has expired or been revoked, or its policy does not grant read on that path%s",
			ref, v.addr, path, kvHint(path))}
	}
	return &vaultError{err: err, msg: fmt.Sprintf("%s: %s", ref, v.describe(err))}
}

// describe says what went wrong talking to Vault, naming its address. It
// uses only Vault's decoded error messages and the network error, never a
// raw response body, which a proxy in between could fill with anything.
func (v *Vault) describe(err error) string {
	var re *api.ResponseError
	if errors.As(err, &re) {
		msg := fmt.Sprintf("Vault at %s answered HTTP %d", v.addr, re.StatusCode)
		if !re.RawError && len(re.Errors) > 0 {
			m := strings.Join(re.Errors, "; ")
			m = strings.Join(strings.Fields(m), " ")
			if len(m) > 300 {
				m = m[:300] + "..."
			}
			msg += ": " + m
		}
		return msg
	}
	// The network error first: it says more than the deadline that
	// retrying it may have run into.
	var dns *net.DNSError
	if errors.As(err, &dns) {
		return fmt.Sprintf("cannot reach Vault at %s: %v", v.addr, dns)
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return fmt.Sprintf("cannot reach Vault at %s: %v", v.addr, op.Err)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Sprintf("Vault at %s did not answer within %s", v.addr, v.timeout)
	}
	if errors.Is(err, context.Canceled) {
		return "cancelled while asking Vault at " + v.addr
	}
	var ue *url.Error
	if errors.As(err, &ue) && ue.Err != nil {
		// Without ue's own text, which repeats the URL.
		return fmt.Sprintf("cannot reach Vault at %s: %v", v.addr, ue.Err)
	}
	return fmt.Sprintf("cannot reach Vault at %s: %v", v.addr, err)
}

// lookupToken checks the token of c and learns whether and how it can be
// renewed.
func (v *Vault) lookupToken(ctx context.Context, c *api.Client) (*api.SecretAuth, error) {
	ctx, cancel := context.WithTimeout(ctx, v.timeout)
	defer cancel()
	sec, err := c.Auth().Token().LookupSelfWithContext(ctx)
	if err != nil {
		if isDenied(err) {
			return nil, &vaultError{err: err, msg: fmt.Sprintf("vault token was rejected by Vault at %s (expired, revoked or not a token of this Vault)", v.addr)}
		}
		return nil, &vaultError{err: err, msg: "vault token lookup: " + v.describe(err)}
	}
	auth := &api.SecretAuth{ClientToken: c.Token()}
	if sec != nil {
		ttl, _ := sec.TokenTTL()
		auth.LeaseDuration = int(ttl / time.Second)
		auth.Renewable, _ = sec.TokenIsRenewable()
	}
	return auth, nil
}

// doLogin logs in with the AppRole and secretID and makes the new token
// current.
func (v *Vault) doLogin(ctx context.Context, secretID Secret) (*api.SecretAuth, error) {
	ctx, cancel := context.WithTimeout(ctx, v.timeout)
	defer cancel()
	sec, err := v.login.Logical().WriteWithContext(ctx, "auth/"+v.appRole.Mount+"/login", map[string]any{
		"role_id":   v.appRole.RoleID,
		"secret_id": secretID.Reveal(),
	})
	if err != nil {
		return nil, &vaultError{err: err, msg: "vault AppRole login: " + v.describe(err)}
	}
	if sec == nil || sec.Auth == nil || sec.Auth.ClientToken == "" {
		return nil, fmt.Errorf("vault AppRole login: Vault at %s returned no token", v.addr)
	}
	v.client.SetToken(sec.Auth.ClientToken)
	v.gen.Add(1)
	v.log.Info("logged in to Vault with AppRole", "ttl", time.Duration(sec.Auth.LeaseDuration)*time.Second, "renewable", sec.Auth.Renewable)
	return sec.Auth, nil
}

// reauth gets a new token and makes it current: an AppRole login with the
// secret ID as Credential reads it now, or the token Credential reads now
// if it is another. The caller holds loginMu.
func (v *Vault) reauth(ctx context.Context) (*api.SecretAuth, error) {
	auth, err := v.newToken(ctx)
	if err != nil {
		v.loginErr, v.loginFailed = err, time.Now()
		return nil, err
	}
	v.loginErr = nil
	return auth, nil
}

func (v *Vault) newToken(ctx context.Context) (*api.SecretAuth, error) {
	if v.appRole != nil {
		id := v.appRole.SecretID
		if v.credential != nil {
			var err error
			if id, err = v.readCredential(ctx, "AppRole secret ID"); err != nil {
				return nil, err
			}
		}
		return v.doLogin(ctx, id)
	}
	if v.credential == nil {
		return nil, errors.New("vault token can no longer be used, and there is no way to read it again")
	}
	tok, err := v.readCredential(ctx, "token")
	if err != nil {
		return nil, err
	}
	if tok.Reveal() == v.client.Token() {
		return v.renewCurrent(ctx)
	}
	c, err := v.client.Clone()
	if err != nil {
		return nil, fmt.Errorf("vault client for %s: %w", v.addr, err)
	}
	c.SetToken(tok.Reveal())
	auth, err := v.lookupToken(ctx, c)
	if err != nil {
		return nil, err
	}
	v.client.SetToken(tok.Reveal())
	v.gen.Add(1)
	v.log.Info("vault token read again from its source", "ttl", time.Duration(auth.LeaseDuration)*time.Second, "renewable", auth.Renewable)
	return auth, nil
}

// renewCurrent renews the current token, which its source still holds,
// if Vault still accepts it and renewing extends it: the renewal loop
// gives up on a token only once it is dead or at its max TTL, but a token
// still alive is never refused for being the one in use.
func (v *Vault) renewCurrent(ctx context.Context) (*api.SecretAuth, error) {
	const waiting = "vault token: its source still holds the token in use, which "
	auth, err := v.lookupToken(ctx, v.client)
	if err != nil {
		return nil, fmt.Errorf(waiting+"cannot be used (%w); waiting for a new one", err)
	}
	if !auth.Renewable || auth.LeaseDuration <= 0 {
		return nil, errors.New(waiting + "can no longer be renewed; waiting for a new one")
	}
	r, err := v.renewToken(ctx, auth.LeaseDuration)
	if err != nil {
		return nil, fmt.Errorf(waiting+"could not be renewed (%w); waiting for a new one", err)
	}
	if !r.Renewable || r.LeaseDuration < auth.LeaseDuration {
		return nil, errors.New(waiting + "can no longer be renewed; waiting for a new one")
	}
	v.log.Info("renewed the vault token its source still holds", "ttl", time.Duration(r.LeaseDuration)*time.Second)
	return r, nil
}

// readCredential reads the token or secret ID (what) with Credential.
func (v *Vault) readCredential(ctx context.Context, what string) (Secret, error) {
	s, err := v.credential(ctx)
	if err != nil {
		return Secret{}, fmt.Errorf("reading the vault %s again: %w", what, err)
	}
	if s.Reveal() == "" {
		return Secret{}, fmt.Errorf("reading the vault %s again: it is empty", what)
	}
	return s, nil
}

// relogin gets a new token unless someone has since the caller's read,
// which began at login generation gen, or an attempt failed less than
// reloginPause ago, and hands the token to the renewal loop.
func (v *Vault) relogin(ctx context.Context, gen uint64) error {
	v.loginMu.Lock()
	defer v.loginMu.Unlock()
	if v.gen.Load() != gen {
		return nil
	}
	if v.loginErr != nil && time.Since(v.loginFailed) < reloginPause {
		return fmt.Errorf("%w (not tried again within %s of that failure)", v.loginErr, reloginPause)
	}
	v.mu.Lock()
	closed := v.closed
	v.mu.Unlock()
	if closed {
		// Close revokes the token it knows of; a later one would stay.
		return errors.New("the vault source is closed")
	}
	auth, err := v.reauth(ctx)
	if err != nil {
		return err
	}
	for {
		select {
		case v.newAuth <- auth:
			return nil
		default:
			// Replace a token the loop has not picked up yet.
			select {
			case <-v.newAuth:
			default:
			}
		}
	}
}

// run keeps the token alive until ctx ends: it renews a renewable token,
// and when the token cannot be renewed any more or is about to expire,
// logs in again with an AppRole, or reads the token again with Credential.
func (v *Vault) run(ctx context.Context, auth *api.SecretAuth) {
	defer close(v.done)
	for {
		next := v.watch(ctx, auth)
		if ctx.Err() != nil {
			return
		}
		if next != nil {
			auth = next
			continue
		}
		if v.appRole == nil {
			if v.credential == nil {
				v.log.Warn("vault token can no longer be renewed; reads fail once it expires, until a new token is configured")
				return
			}
			v.log.Info("vault token can no longer be renewed; reading it again from its source until it holds a new one")
		}
		if auth = v.loginRetry(ctx); auth == nil {
			return
		}
	}
}

// watch follows one token until it needs replacing (nil) or another
// caller replaced it (the new token). It renews a renewable token itself
// rather than with Vault's LifetimeWatcher, which, when renewals fail,
// gives up on a token that is still valid once its TTL runs low: a
// failed renewal is retried, one to sixty seconds apart, until one
// succeeds or the token is dead (Vault refuses it, or its TTL has run
// out), and only then is the token replaced.
func (v *Vault) watch(ctx context.Context, auth *api.SecretAuth) *api.SecretAuth {
	ttl := time.Duration(auth.LeaseDuration) * time.Second
	if ttl <= 0 {
		// A token without TTL, such as a root token, never expires.
		select {
		case <-ctx.Done():
			return nil
		case a := <-v.newAuth:
			return a
		}
	}
	expires := time.Now().Add(ttl)
	renewable := auth.Renewable
	// The first renewal is made at once, as the token may have been
	// looked up well into its TTL; later ones at two thirds of the TTL
	// each renewal leaves.
	var next, retry time.Duration
	for {
		if !renewable {
			// Replace it while it still works: at 80% of what it has left.
			next = time.Until(expires) * 4 / 5
		}
		t := time.NewTimer(next)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case a := <-v.newAuth:
			t.Stop()
			return a
		case <-t.C:
		}
		if !renewable {
			if auth.Renewable {
				v.log.Info("vault token reached the end of its renewable lifetime")
			}
			return nil
		}
		start := time.Now()
		r, err := v.renewToken(ctx, auth.LeaseDuration)
		if ctx.Err() != nil {
			return nil
		}
		switch {
		case err == nil:
			retry = 0
			ttl := time.Duration(r.LeaseDuration) * time.Second
			expires = start.Add(ttl)
			v.log.Debug("renewed vault token", "ttl", ttl)
			// A TTL short of the one asked for is the token's max TTL:
			// no renewal takes it further.
			renewable = r.Renewable && r.LeaseDuration >= auth.LeaseDuration
			next = ttl * 2 / 3
		case isDenied(err) && !v.tokenAlive(ctx):
			v.log.Error("vault token renewal failed: Vault refuses the token (expired or revoked)", "error", err.Error())
			return nil
		case isDenied(err):
			// Its policy does not let it renew itself; it lives out its TTL.
			v.log.Warn("vault token renewal failed: the token may not renew itself; it is replaced before it expires", "error", err.Error())
			renewable = false
		case !time.Now().Before(expires):
			v.log.Error("vault token renewal failed until the token expired", "error", err.Error())
			return nil
		default:
			retry = min(max(2*retry, time.Second), time.Minute)
			next = min(retry, time.Until(expires))
			v.log.Warn("vault token renewal failed; retrying until it succeeds or the token expires",
				"error", err.Error(), "retry_in", next, "expires_in", time.Until(expires).Round(time.Second))
		}
	}
}

// renewToken renews the current token, asking for increment seconds.
func (v *Vault) renewToken(ctx context.Context, increment int) (*api.SecretAuth, error) {
	ctx, cancel := context.WithTimeout(ctx, v.timeout)
	defer cancel()
	sec, err := v.client.Auth().Token().RenewSelfWithContext(ctx, increment)
	if err != nil {
		return nil, &vaultError{err: err, msg: v.describe(err)}
	}
	if sec == nil || sec.Auth == nil {
		return nil, &vaultError{msg: fmt.Sprintf("Vault at %s answered a token renewal without the token's lease", v.addr)}
	}
	return sec.Auth, nil
}

// loginRetry gets a new token until it succeeds, a read gets one, or ctx
// ends (nil), backing off from one second to one minute between attempts.
func (v *Vault) loginRetry(ctx context.Context) *api.SecretAuth {
	wait := time.Second
	for {
		v.loginMu.Lock()
		var auth *api.SecretAuth
		var err error
		select {
		case auth = <-v.newAuth: // relogin sends holding loginMu
		default:
			auth, err = v.reauth(ctx)
		}
		v.loginMu.Unlock()
		if err == nil {
			return auth
		}
		if ctx.Err() != nil {
			return nil
		}
		v.log.Warn("getting a new vault token failed; retrying", "error", err.Error(), "retry_in", wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case auth := <-v.newAuth:
			t.Stop()
			return auth
		case <-t.C:
		}
		wait = min(2*wait, time.Minute)
	}
}

// Close stops token renewal, drops the cache and, for an AppRole, revokes
// the token it logged in with, since nothing will use it again. A token
// given in the options, or read with Credential, is left alone: it belongs
// to whoever made it.
func (v *Vault) Close() error {
	v.mu.Lock()
	if v.closed {
		v.mu.Unlock()
		return nil
	}
	v.closed = true
	v.cache = nil
	v.mu.Unlock()
	v.stop()
	<-v.done
	if v.appRole == nil {
		return nil
	}
	// A login in progress finishes first, so its token is the one revoked.
	v.loginMu.Lock()
	defer v.loginMu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), v.timeout)
	defer cancel()
	if err := v.client.Auth().Token().RevokeSelfWithContext(ctx, ""); err != nil {
		return &vaultError{err: err, msg: "revoking the vault AppRole token: " + v.describe(err)}
	}
	return nil
}
