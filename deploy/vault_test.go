package deploy

import (
	"bufio"
	"encoding/base64"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/amgateway/amg/internal/config"
	"github.com/amgateway/amg/internal/secrets"
	"github.com/amgateway/amg/internal/secrets/vaulttest"
)

// vaultRefs returns the secret references cfg reads: its upstreams'
// headers, then the shared keys.
func vaultRefs(cfg *config.Config) []secrets.Ref {
	refs := headerRefs(cfg)
	refs = append(refs, cfg.Redis.DecisionKey.Refs()...)
	return append(refs, cfg.Redis.AuditKey.Refs()...)
}

// checkSharedKeys checks that cfg takes the keys the replicas share from
// Vault: without them, amg keeps the keys in Redis, where whoever reads
// Redis could sign decisions.
func checkSharedKeys(t *testing.T, where string, cfg *config.Config) {
	t.Helper()
	for name, key := range map[string]config.Template{"decision_key": cfg.Redis.DecisionKey, "audit_key": cfg.Redis.AuditKey} {
		refs := key.Refs()
		if len(refs) != 1 || refs[0].Scheme != secrets.SchemeVault || key.String() != "${"+refs[0].String()+"}" {
			t.Errorf("%s: redis.%s is %q, want a single ${vault:...} reference", where, name, key.String())
		}
	}
}

// runVaultCLI runs script in a shell with the vault CLI on its path,
// pointed at srv with token.
func runVaultCLI(t *testing.T, srv *vaulttest.Server, token, script string) string {
	t.Helper()
	bin, err := vaulttest.Binary()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/bin/sh", "-ec", script)
	cmd.Env = []string{"PATH=" + filepath.Dir(bin) + string(os.PathListSeparator) + os.Getenv("PATH"),
		"HOME=" + t.TempDir(), "VAULT_ADDR=" + srv.Addr, "VAULT_TOKEN=" + token}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s\nscript:\n%s", err, out, script)
	}
	return string(out)
}

// resolveAll reads every vault: reference of cfg from srv with token, as
// amg would at start, and returns the values by reference.
func resolveAll(t *testing.T, srv *vaulttest.Server, token string, cfg *config.Config) map[string]string {
	t.Helper()
	v, err := secrets.NewVault(t.Context(), secrets.VaultOptions{Address: srv.Addr, Token: secrets.New(token)})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	got := map[string]string{}
	for _, ref := range vaultRefs(cfg) {
		s, err := v.Resolve(t.Context(), ref)
		if err != nil {
			t.Error(err) // it names ref
			continue
		}
		got[ref.String()] = s.Reveal()
	}
	return got
}

// checkKeys checks the shared keys in values, as resolveAll read them:
// at least the 32 bytes amg requires, 32 random bytes in base64 as the
// scripts make them, and not one key twice.
func checkKeys(t *testing.T, cfg *config.Config, values map[string]string) {
	t.Helper()
	seen := map[string]bool{}
	for _, key := range []config.Template{cfg.Redis.DecisionKey, cfg.Redis.AuditKey} {
		for _, ref := range key.Refs() {
			v, ok := values[ref.String()]
			if !ok {
				continue // resolveAll said why
			}
			raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(v))
			if err != nil || len(raw) != 32 || len(v) < 32 {
				t.Errorf("%s is %d bytes (%v), want 32 random bytes in base64", ref, len(v), err)
			}
			if seen[v] {
				t.Errorf("%s: the same key again", ref)
			}
			seen[v] = true
		}
	}
}

// The vault-seed service's script, run by a shell against a real Vault
// with the vault CLI, writes every secret deploy/amg.yaml reads from
// Vault; run again (as `docker compose up` does), it keeps the shared keys
// it made, which the running amg holds.
func TestComposeVaultSeed(t *testing.T) {
	p := loadCompose(t)
	seed := service(t, p, "vault-seed")
	if len(seed.Entrypoint) != 2 || seed.Entrypoint[0] != "/bin/sh" || seed.Entrypoint[1] != "-ec" || len(seed.Command) != 1 {
		t.Fatalf("vault-seed entrypoint %q command %q, want /bin/sh -ec SCRIPT", seed.Entrypoint, seed.Command)
	}
	// compose has made each $$ the $ the shell reads.
	script := seed.Command[0]
	if strings.Contains(script, "$$") {
		t.Errorf("vault-seed script after compose's interpolation still has $$:\n%s", script)
	}
	cfg := parseConfig(t, "deploy/amg.yaml", readFile(t, "deploy/amg.yaml"))
	checkSharedKeys(t, "deploy/amg.yaml", cfg)

	srv := vaulttest.Start(t)
	runVaultCLI(t, srv, srv.RootToken, script)
	first := resolveAll(t, srv, srv.RootToken, cfg)
	checkKeys(t, cfg, first)

	runVaultCLI(t, srv, srv.RootToken, script)
	again := resolveAll(t, srv, srv.RootToken, cfg)
	for ref, v := range first {
		if again[ref] != v {
			t.Errorf("%s changed when vault-seed ran again", ref)
		}
	}
}

// The Vault steps of deploy/README.md's Kubernetes setup, run by a shell
// against a real Vault: they write every secret amg-config reads, and the
// token the README has amg-vault hold may read each of them.
func TestKubernetesVaultSetup(t *testing.T) {
	cfg := parseConfig(t, "deploy/k8s amg-config amg.yaml", []byte(configMapData(t, find(t, loadManifests(t), "ConfigMap", "amg-config"))["amg.yaml"]))
	checkSharedKeys(t, "amg-config", cfg)
	steps, tokenCmd := readmeVaultSteps(t, string(readFile(t, "deploy/README.md")))

	srv := vaulttest.Start(t)
	runVaultCLI(t, srv, srv.RootToken, steps)
	token := strings.TrimSpace(runVaultCLI(t, srv, srv.RootToken, tokenCmd))
	checkKeys(t, cfg, resolveAll(t, srv, token, cfg))
}

// readmeVaultSteps returns, from the README's Kubernetes setup, the
// commands before the first kubectl (those run against Vault), and the
// vault command whose output the amg-vault Secret holds.
func readmeVaultSteps(t *testing.T, readme string) (steps, tokenCmd string) {
	t.Helper()
	_, rest, ok := strings.Cut(readme, "## Kubernetes: Vault and the Secrets to set up first")
	if !ok {
		t.Fatal("deploy/README.md: no Kubernetes setup section")
	}
	_, rest, ok = strings.Cut(rest, "```sh\n")
	block, _, closed := strings.Cut(rest, "```")
	if !ok || !closed {
		t.Fatal("deploy/README.md: the Kubernetes setup has no sh block")
	}
	var b strings.Builder
	sc := bufio.NewScanner(strings.NewReader(block))
	for sc.Scan() && !strings.HasPrefix(sc.Text(), "kubectl ") {
		b.WriteString(sc.Text() + "\n")
	}
	m := regexp.MustCompile(`amg-vault \\\n\s+--from-literal=token="\$\((vault token create [^)]*)\)"`).FindStringSubmatch(block)
	if m == nil {
		t.Fatalf("deploy/README.md: no amg-vault Secret made from `vault token create ...`:\n%s", block)
	}
	return b.String(), m[1]
}
