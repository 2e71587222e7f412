package main

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/amgateway/amg/internal/config"
)

// redisFlagHelp describes --redis for every command that takes it.
const redisFlagHelp = "the Redis replicas share: host:port, or a redis:// or rediss:// (TLS) URL with an ACL user"

// redisClient connects to the Redis named by --redis: host:port, or a
// redis:// or rediss:// URL (redis[s]://[user@]host:port[/db]). The
// password comes from AMG_REDIS_PASSWORD unless the URL has one. Over
// TLS, AMG_REDIS_CA_FILE names the CAs to trust (else the system's), and
// AMG_REDIS_CERT_FILE with AMG_REDIS_KEY_FILE a client certificate, as
// redis.tls does in the gateway's config. With any of those set, an
// address that is not a rediss:// URL is refused: TLS was meant, and the
// password would go in clear.
func redisClient(addr string) (*redis.Client, error) {
	if !strings.HasPrefix(strings.ToLower(addr), "rediss://") {
		for _, env := range []string{"AMG_REDIS_CA_FILE", "AMG_REDIS_CERT_FILE", "AMG_REDIS_KEY_FILE"} {
			if os.Getenv(env) != "" {
				return nil, fmt.Errorf("--redis: %s is set, but the address is not a rediss:// URL: TLS would not be used, and the password would go in clear", env)
			}
		}
	}
	opts := &redis.Options{Addr: addr}
	if strings.Contains(addr, "://") {
		var err error
		if opts, err = redis.ParseURL(addr); err != nil {
			// Not the URL's own error: it quotes the URL, password and all.
			var ue *url.Error
			if errors.As(err, &ue) {
				err = ue.Err
			}
			return nil, fmt.Errorf("--redis: %w", err)
		}
		if opts.TLSConfig != nil {
			t := config.TLS{CAFile: os.Getenv("AMG_REDIS_CA_FILE"), ServerName: opts.TLSConfig.ServerName,
				CertFile: os.Getenv("AMG_REDIS_CERT_FILE"), KeyFile: os.Getenv("AMG_REDIS_KEY_FILE")}
			if (t.CertFile == "") != (t.KeyFile == "") {
				return nil, fmt.Errorf("--redis: AMG_REDIS_CERT_FILE and AMG_REDIS_KEY_FILE go together")
			}
			if opts.TLSConfig, err = t.Config(); err != nil {
				return nil, fmt.Errorf("--redis: tls: %w", err)
			}
		}
	}
	if opts.Password == "" {
		opts.Password = os.Getenv("AMG_REDIS_PASSWORD")
	}
	return redis.NewClient(opts), nil
}

// redisName names the Redis of --redis for messages, without the password
// a URL may hold.
func redisName(addr string) string {
	if !strings.Contains(addr, "://") {
		return addr
	}
	u, err := url.Parse(addr)
	if err != nil {
		return "the --redis URL"
	}
	return u.Redacted()
}
