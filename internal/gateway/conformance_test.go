package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/amgateway/amg/internal/config"
)

// conformanceCLI is the MCP conformance suite as scripts/setup installs it.
func conformanceCLI(t *testing.T) string {
	t.Helper()
	script := filepath.Join(filepath.Dir(filepath.Dir(filepath.Dir(everythingScript(t)))), "conformance", "dist", "index.js")
	if _, err := os.Stat(script); err != nil {
		t.Fatalf("@modelcontextprotocol/conformance is not installed (%v); run scripts/setup", err)
	}
	return script
}

// startConformanceServer builds and runs the go-sdk's conformance
// everything-server on loopback, and returns its URL and its program,
// which serves over stdio when run without flags.
func startConformanceServer(t *testing.T) (url, program string) {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "everything-server")
	build := exec.Command("go", "build", "-o", bin, "github.com/modelcontextprotocol/go-sdk/conformance/everything-server")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the conformance server: %v\n%s", err, out)
	}
	port := freePort(t)
	cmd := exec.Command(bin, fmt.Sprintf("-http=127.0.0.1:%d", port), "-stateless=false")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	u := fmt.Sprintf("http://127.0.0.1:%d/mcp", port)
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if resp, err := http.Get(u); err == nil {
			resp.Body.Close()
			return u, bin
		}
	}
	t.Fatal("conformance server did not start")
	return "", ""
}

// grantEverything writes a role that grants every tool (naming each of
// its arguments), prompt and resource the server offers: the gateway then
// has no reason to deny a conformance scenario.
func grantEverything(t *testing.T, upstream string) string {
	t.Helper()
	ctx := context.Background()
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "amg-test", Version: "1"}, nil).Connect(ctx, &mcp.StreamableClientTransport{Endpoint: upstream}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	var b strings.Builder
	b.WriteString("role: conformance\nservers:\n  everything:\n    tools:\n")
	for tool, err := range cs.Tools(ctx, nil) {
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "      - name: %q\n        constraints: {", tool.Name)
		var schema struct{ Properties map[string]json.RawMessage }
		raw, _ := json.Marshal(tool.InputSchema)
		json.Unmarshal(raw, &schema)
		names := slices.Sorted(func(yield func(string) bool) {
			for k := range schema.Properties {
				if !yield(k) {
					return
				}
			}
		})
		for i, name := range names {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "%q: {}", name)
		}
		b.WriteString("}\n")
	}
	b.WriteString("    prompts:\n")
	for p, err := range cs.Prompts(ctx, nil) {
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "      - name: %q\n        constraints: {", p.Name)
		for i, a := range p.Arguments {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "%q: { optional: true }", a.Name)
		}
		b.WriteString("}\n")
	}
	b.WriteString("    resources:\n")
	for r, err := range cs.Resources(ctx, nil) {
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "      - %q\n", globEscape(r.URI))
	}
	for rt, err := range cs.ResourceTemplates(ctx, nil) {
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "      - %q\n", regexp.MustCompile(`\{[^}]*\}`).ReplaceAllString(globEscape(rt.URITemplate), "*"))
	}
	return b.String()
}

func globEscape(s string) string {
	return strings.NewReplacer(`*`, `\*`, `?`, `\?`, `[`, `\[`, `\`, `\\`).Replace(s)
}

var scenarioLine = regexp.MustCompile(`(?m)^([✓✗]) (\S+): (\d+) passed, (\d+) failed`)

// conformanceChecks is how many of the suite's checks the README's "MCP
// conformance" table says pass, against the upstream alone and through
// AMG both ways, with none failing (TestConformanceREADME keeps the two in
// agreement). Raise it with the table when the suite grows.
const conformanceChecks = 40

var totalLine = regexp.MustCompile(`Total: (\d+) passed, (\d+) failed`)

// wantConformanceTotal checks that total, a totals line of the suite, has
// at least the checks the README claims passed and none failed: a
// scenario that starts failing against the upstream alone would otherwise
// drop out of the comparison with AMG unseen.
func wantConformanceTotal(t *testing.T, who, total string) {
	t.Helper()
	m := totalLine.FindStringSubmatch(total)
	if m == nil {
		t.Errorf("%s: no totals line", who)
		return
	}
	if passed, _ := strconv.Atoi(m[1]); passed < conformanceChecks || m[2] != "0" {
		t.Errorf("%s: %s; the README claims at least %d passed and none failed", who, total, conformanceChecks)
	}
}

// The README's conformance table states conformanceChecks for every row.
func TestConformanceREADME(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, table, _ := strings.Cut(string(readme), "\n## MCP conformance\n")
	table, _, _ = strings.Cut(table, "\n### ")
	rows := regexp.MustCompile(`(?m)^\| (server alone|through AMG[^|]*) \| (\d+) \| (\d+) \|$`).FindAllStringSubmatch(table, -1)
	if len(rows) != 3 {
		t.Fatalf("found %d rows of checks in the README's MCP conformance table, want 3", len(rows))
	}
	for _, r := range rows {
		if r[2] != strconv.Itoa(conformanceChecks) || r[3] != "0" {
			t.Errorf("README: %q: %s passed, %s failed; TestConformance checks %d passed, 0 failed", r[1], r[2], r[3], conformanceChecks)
		}
	}
}

// runConformance runs the suite against url and returns each scenario's
// outcome (true: passed) and the totals line.
func runConformance(t *testing.T, url string) (map[string]bool, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", conformanceCLI(t), "server", "--url", url)
	cmd.Dir = t.TempDir()
	out, _ := cmd.CombinedOutput() // failing scenarios make it exit non-zero
	results := map[string]bool{}
	for _, m := range scenarioLine.FindAllStringSubmatch(string(out), -1) {
		results[m[2]] = m[1] == "✓" && m[4] == "0"
	}
	if len(results) == 0 {
		t.Fatalf("the conformance suite reported no scenarios:\n%s", out)
	}
	total := totalLine.FindString(string(out))
	return results, total
}

// TestConformance runs the official MCP conformance suite against the
// go-sdk's conformance server alone and through AMG (with a role granting
// all it offers), and lists every scenario that passes alone but not
// through the gateway. AMG reaches the server both ways an upstream can
// be reached: over Streamable HTTP, where calls take the broker's direct
// path, and over stdio, where they go through the SDK's client and server.
func TestConformance(t *testing.T) {
	upstream, program := startConformanceServer(t)
	direct, directTotal := runConformance(t, upstream)
	t.Logf("conformance: upstream alone %s", directTotal)
	wantConformanceTotal(t, "upstream alone", directTotal)
	grant := grantEverything(t, upstream)
	for _, tc := range []struct {
		name string
		up   *config.Upstream
	}{
		{"http", &config.Upstream{Name: "everything", URL: upstream, ConnectTimeout: 5 * time.Second, CallTimeout: 30 * time.Second}},
		{"stdio", &config.Upstream{Name: "everything", Command: []string{program}, ConnectTimeout: 5 * time.Second, CallTimeout: 30 * time.Second}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url, token := startGateway(t, map[string]*config.Upstream{"everything": tc.up}, "conformance", grant, func(c *config.Config) {
				// The suite calls the server's own names; with one upstream
				// the gateway can show them unchanged.
				c.UnprefixedNames = true
			})
			// The suite cannot send a bearer token; a loopback proxy adds it.
			target, _ := urlParse(url)
			proxy := httptest.NewServer(&httputil.ReverseProxy{
				Rewrite: func(r *httputil.ProxyRequest) {
					r.SetURL(target)
					r.Out.URL.Path = target.Path
					r.Out.Host = r.In.Host // as Envoy keeps :authority
					r.Out.Header.Set("Authorization", "Bearer "+token)
				},
				FlushInterval: -1,
			})
			defer proxy.Close()
			gated, gatedTotal := runConformance(t, proxy.URL+"/mcp")

			var lost, stale []string
			for name, ok := range direct {
				if ok && !gated[name] {
					if _, known := knownGaps[name]; !known {
						lost = append(lost, name)
					}
				}
				if _, known := knownGaps[name]; known && ok && gated[name] {
					stale = append(stale, name)
				}
			}
			slices.Sort(lost)
			slices.Sort(stale)
			t.Logf("conformance: through AMG, upstream over %s: %s; %d known gaps", tc.name, gatedTotal, len(knownGaps))
			// A known gap fails checks through AMG that pass alone, and
			// the table's row says how many.
			if len(knownGaps) == 0 {
				wantConformanceTotal(t, "through AMG, upstream over "+tc.name, gatedTotal)
			}
			if len(lost) > 0 {
				t.Errorf("%d scenarios pass against the upstream alone but not through AMG: %s", len(lost), strings.Join(lost, ", "))
			}
			if len(stale) > 0 {
				t.Errorf("known gaps that now pass through AMG (remove them from knownGaps): %s", strings.Join(stale, ", "))
			}
		})
	}
}

// knownGaps are the scenarios that pass against the upstream alone but not
// through AMG (with unprefixed names, as the suite calls the server's own
// names), each with why. The test fails when another one appears, and
// when one of these starts passing, so the list stays true.
var knownGaps = map[string]string{}

func urlParse(s string) (*url.URL, error) { return url.Parse(s) }
