package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/amgateway/amg/internal/diag"
)

// TLS is how to reach a server over TLS.
type TLS struct {
	// CAFile is a PEM file of the CA certificates to trust; "" means the
	// system's.
	CAFile string
	// ServerName is the name the server's certificate must carry; "" means
	// the host of the address dialled.
	ServerName string
	// CertFile and KeyFile, both or neither, are a PEM client certificate
	// and its key, for a server that asks for one.
	CertFile, KeyFile string
}

// ListenTLS is the certificate a listener serves TLS with, as PEM files on
// the host of the server that reads them: Envoy's, for Envoy's agent
// listener, which need not be amg's.
type ListenTLS struct {
	CertFile, KeyFile string
	// MinVersion is the least TLS version accepted: "1.2" or "1.3".
	MinVersion string
}

// Config reads the files and returns the crypto/tls configuration; TLS 1.2
// is the least it accepts.
func (t *TLS) Config() (*tls.Config, error) {
	c := &tls.Config{ServerName: t.ServerName, MinVersion: tls.VersionTLS12}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, err
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s holds no PEM certificate", t.CAFile)
		}
	}
	if (t.CertFile == "") != (t.KeyFile == "") {
		return nil, errors.New("cert_file and key_file go together")
	}
	if t.CertFile != "" {
		pair, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, err
		}
		c.Certificates = []tls.Certificate{pair}
	}
	return c, nil
}

var listenTLSKeys = []string{"cert_file", "key_file", "min_version"}

// listenTLS reads a listener's tls section. Its files are on the server's
// host, not necessarily amg's, so they are not read here; each must be an
// absolute path, since the server would resolve a relative one against a
// working directory no config names.
func (l *loader) listenTLS(n *yaml.Node, path string) *ListenTLS {
	t := &ListenTLS{MinVersion: "1.2"}
	set := map[string]bool{}
	l.Fields(n, path, listenTLSKeys, func(key string, _, v *yaml.Node) {
		p := path + "." + key
		set[key] = true
		if key == "min_version" {
			// 1.2 unquoted is a YAML number; either way, it is the text.
			switch {
			case v.Kind != yaml.ScalarNode:
				l.Errorf(v, p, `must be "1.2" or "1.3", got %s`, diag.Describe(v))
				return
			case v.Value != "1.2" && v.Value != "1.3":
				l.Errorf(v, p, `must be "1.2" or "1.3", got %q`, v.Value)
				return
			}
			t.MinVersion = v.Value
			return
		}
		s, ok := l.Str(v, p)
		switch {
		case !ok:
			return
		case !strings.HasPrefix(s, "/") || strings.IndexByte(s, 0) >= 0:
			l.Errorf(v, p, "must be an absolute path, as the server finds the file on its own host, got %q", s)
			return
		case key == "cert_file":
			t.CertFile = s
		case key == "key_file":
			t.KeyFile = s
		}
	})
	if n.Kind != yaml.MappingNode {
		return nil
	}
	for _, key := range []string{"cert_file", "key_file"} {
		if !set[key] {
			l.Errorf(n, path, "needs %s: a certificate and its key, both", key)
		}
	}
	return t
}

// tls reads a tls setting: true for TLS with the system's CAs, false for
// none, or a mapping of TLS's fields. The files are read now, so that a
// missing or malformed one is reported where the config names it.
func (l *loader) tls(n *yaml.Node, path string) *TLS {
	if n.Kind == yaml.ScalarNode {
		if on, ok := l.Boolean(n, path); ok && on {
			return &TLS{}
		}
		return nil
	}
	t := &TLS{}
	l.Fields(n, path, tlsKeys, func(key string, _, v *yaml.Node) {
		p := path + "." + key
		s, ok := l.Str(v, p)
		if ok && s == "" {
			l.Errorf(v, p, "must not be empty (leave it out instead)")
			return
		}
		switch key {
		case "ca_file":
			t.CAFile = s
		case "server_name":
			t.ServerName = s
		case "cert_file":
			t.CertFile = s
		case "key_file":
			t.KeyFile = s
		}
	})
	if _, err := t.Config(); err != nil {
		l.Errorf(n, path, "%v", err)
	}
	return t
}
