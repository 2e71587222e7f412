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
