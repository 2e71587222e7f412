package config

import (
	"os"
	"strings"
	"testing"
)

// The config examples in the README must load as they stand.
func TestREADMEExampleLoads(t *testing.T) {
	cfg := readmeExample(t, "## Gateway config")
	if len(cfg.Names) != 2 || cfg.Upstreams["notion"].URL == "" || len(cfg.Upstreams["files"].Command) == 0 {
		t.Errorf("README example loaded as %+v", cfg)
	}
	cfg = readmeExample(t, "## Envoy mode")
	if cfg.XDSListen == "" || len(cfg.Envoy.BrokerAddresses) != 2 || cfg.Envoy.TLS == nil {
		t.Errorf("README Envoy mode example loaded as %+v", cfg)
	}
}

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
