package config

import (
	"os"
	"strings"
	"testing"
)

// The config example in the README must load as it stands.
func TestREADMEExampleLoads(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(readme), "## Gateway config")
	if !ok {
		t.Fatal("README has no gateway config section")
	}
	_, block, ok := strings.Cut(rest, "```yaml\n")
	if !ok {
		t.Fatal("gateway config section has no yaml block")
	}
	block, _, _ = strings.Cut(block, "```")
	cfg, err := Parse("README.md", []byte(block), nil)
	if err != nil {
		t.Fatalf("README example does not load:\n%v", err)
	}
	if len(cfg.Names) != 2 || cfg.Upstreams["notion"].URL == "" || len(cfg.Upstreams["files"].Command) == 0 {
		t.Errorf("README example loaded as %+v", cfg)
	}
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
