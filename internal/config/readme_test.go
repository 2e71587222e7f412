package config

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// The config examples in the README must load as they stand.
func TestREADMEExampleLoads(t *testing.T) {
	cfg := readmeExample(t, "## Gateway config")
	if len(cfg.Names) != 4 || cfg.Upstreams["notion"].URL == "" || len(cfg.Upstreams["files"].Command) == 0 ||
		!cfg.Upstreams["lab"].AllowInsecure || cfg.Upstreams["demo"].Builtin == "" {
		t.Errorf("README example loaded as %+v", cfg)
	}
	cfg = readmeExample(t, "## Envoy mode")
	if cfg.XDSListen == "" || len(cfg.Envoy.BrokerAddresses) != 2 || cfg.Envoy.TLS == nil {
		t.Errorf("README Envoy mode example loaded as %+v", cfg)
	}
}

// Every key the loader takes is shown, at its place, in one of the
// README's yaml examples (commented out, for one whose default is best
// left alone), so that the reference cannot fall behind the loader.
func TestREADMEShowsEveryKey(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	shown := map[string]bool{}
	var walk func(n *yaml.Node, path string)
	walk = func(n *yaml.Node, path string) {
		for _, c := range n.Content {
			if n.Kind != yaml.MappingNode {
				walk(c, path)
			}
		}
		if n.Kind != yaml.MappingNode {
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			key := n.Content[i].Value
			if path == "upstreams." { // the names are the file's own
				key = "*"
			}
			shown[path+key] = true
			walk(n.Content[i+1], path+key+".")
		}
	}
	for _, block := range strings.Split(string(readme), "```yaml\n")[1:] {
		block, _, _ = strings.Cut(block, "```")
		block = commentedKey.ReplaceAllString(block, "$1$2")
		var doc yaml.Node
		if yaml.Unmarshal([]byte(block), &doc) == nil {
			walk(&doc, "")
		}
	}
	for _, section := range []struct {
		path string
		keys []string
	}{
		{"", configKeys}, {"approvals.", approvalKeys}, {"console.", consoleKeys}, {"audit.", auditKeys},
		{"redis.", redisKeys}, {"redis.tls.", tlsKeys}, {"vault.", vaultKeys}, {"vault.approle.", appRoleKeys},
		{"envoy.", envoyKeys}, {"envoy.tls.", listenTLSKeys}, {"upstreams.*.", upstreamKeys}, {"upstreams.*.timeouts.", timeoutKeys},
	} {
		for _, key := range section.keys {
			if !shown[section.path+key] {
				t.Errorf("no yaml example in the README shows %s%s", section.path, key)
			}
		}
	}
}

// commentedKey is a line of a yaml example that shows a key commented
// out, such as "  # route_timeout: 17m".
var commentedKey = regexp.MustCompile(`(?m)^(\s*)# ([a-z_]+:)`)

// readmeExample loads the first yaml block of the README section whose
// heading line starts with heading.
func readmeExample(t *testing.T, heading string) *Config {
	t.Helper()
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(readme), "\n"+heading)
	if !ok {
		t.Fatalf("README has no section %q", heading)
	}
	_, block, ok := strings.Cut(rest, "```yaml\n")
	if !ok {
		t.Fatalf("README section %q has no yaml block", heading)
	}
	block, _, _ = strings.Cut(block, "```")
	cfg, err := Parse("README.md", []byte(block), nil)
	if err != nil {
		t.Fatalf("README section %q: example does not load:\n%v", heading, err)
	}
	return cfg
}

func TestUnprefixedNames(t *testing.T) {
	cfg, err := Parse("amg.yaml", []byte("unprefixed_names: true\n"), nil)
	if err != nil || !cfg.UnprefixedNames {
		t.Fatalf("with the one default upstream: %v %+v", err, cfg)
	}
	_, err = Parse("amg.yaml", []byte("unprefixed_names: true\nupstreams:\n  a: { builtin: demo }\n  b: { builtin: demo }\n"), nil)
	want := "amg.yaml:1:19: unprefixed_names: needs exactly one upstream (there are 2): with several, names must say which server they belong to"
	if err == nil || err.Error() != want {
		t.Errorf("two upstreams: err = %v, want %q", err, want)
	}
}
