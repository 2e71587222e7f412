package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"go.yaml.in/yaml/v3"
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
