// Command e2e measures a tools/call end to end, side by side, against one
// upstream MCP server on loopback: (a) straight to the upstream, (b)
// through a naive proxy built on the go-sdk (a server whose tool forwards
// through a client session, the SDK's own proxy pattern), (c) through the
// standard library's reverse proxy, which only passes bytes on: the floor
// for any gateway one HTTP hop long, and (d) through AMG with a
// 12-constraint grant and the audit log on. Every client is the go-sdk's,
// over Streamable HTTP, one session per concurrent worker.
//
// Figures are medians over -runs rounds; ratios are taken within a round.
// Each round measures the paths in turn, starting one path further on
// than the round before.
//
//	go run ./bench/e2e -c 1,32 -d 4s -runs 5
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/amgateway/amg/bench/internal/benchrun"
	"github.com/amgateway/amg/internal/config"
	"github.com/amgateway/amg/internal/decision/decisiontest"
	"github.com/amgateway/amg/internal/gateway"
)

// args is a call the benchmark grant allows.
var args = json.RawMessage(decisiontest.BenchArgs)

func main() {
	common := benchrun.Flags()
	duration := flag.Duration("d", 5*time.Second, "how long each measurement runs")
	only := flag.String("only", "", "measure only the path of this name (direct, go-sdk proxy, reverse proxy, AMG)")
	runs := flag.Int("runs", 1, "rounds of measurements; figures are the medians over rounds")
	verbose := flag.Bool("v", false, "report each measurement on stderr as it ends, with the goroutines it started among")
	flag.Parse()
	cs, stopProfile := common.Start()
	defer stopProfile()
	if err := run(cs, *duration, *only, max(*runs, 1), *verbose); err != nil {
		stopProfile()
		log.Fatal(err)
	}
}

// result is one measurement of one path at one concurrency.
type result struct {
	rate     float64
	p50, p99 time.Duration
}

func run(levels []int, d time.Duration, only string, runs int, verbose bool) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	upstream, err := serve(upstreamServer())
	if err != nil {
		return err
	}
	proxy, err := serve(naiveProxy(ctx, upstream))
	if err != nil {
		return err
	}
	plain, err := reverseProxy(upstream)
	if err != nil {
		return err
	}
	amgURL, token, stop, err := startAMG(ctx, upstream)
	if err != nil {
		return err
	}
	defer stop()

	targets := []struct{ name, url, token, tool string }{
		{"direct", upstream, "", "get_pages"},
		{"go-sdk proxy", proxy, "", "get_pages"},
		{"reverse proxy", plain, "", "get_pages"},
		{"AMG", amgURL, token, "bench__get_pages"},
	}
	// Rounds interleave the paths, so that the machine's drift touches
	// each of them alike, and each round starts one path further on, so
	// that none is always measured just after another.
	got := map[int]map[string][]result{}
	for round := range runs {
		for _, c := range levels {
			if got[c] == nil {
				got[c] = map[string][]result{}
			}
			for i := range targets {
				tg := targets[(round+i)%len(targets)]
				if only != "" && tg.name != only && tg.name != "direct" {
					continue
				}
				background := runtime.NumGoroutine()
				rate, p50, p99, err := measure(ctx, tg.url, tg.token, tg.tool, c, d)
				if err != nil {
					return fmt.Errorf("%s: %w", tg.name, err)
				}
				settle()
				if verbose {
					fmt.Fprintf(os.Stderr, "round %d, concurrency %d, %s: %.0f calls/s, p50 %v, p99 %v; %d goroutines before\n",
						round+1, c, tg.name, rate, p50.Round(time.Microsecond), p99.Round(time.Microsecond), background)
				}
				got[c][tg.name] = append(got[c][tg.name], result{rate, p50, p99})
			}
		}
	}

	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(w, "concurrency\tpath\tcalls/s\tp50\tp99\tthroughput vs direct\tp50 added vs go-sdk proxy's\t\n")
	for _, c := range levels {
		direct := got[c]["direct"]
		for _, tg := range targets {
			rs := got[c][tg.name]
			if rs == nil {
				continue
			}
			// Ratios are taken within each round, then their median.
			var vsDirect, vsNaive []float64
			naive := got[c]["go-sdk proxy"]
			for i, r := range rs {
				vsDirect = append(vsDirect, r.rate/direct[i].rate)
				if naive != nil {
					vsNaive = append(vsNaive, float64(r.p50-direct[i].p50)/float64(naive[i].p50-direct[i].p50))
				}
			}
			added := "-"
			if tg.name != "direct" && naive != nil {
				added = fmt.Sprintf("%.2f", median(vsNaive))
			}
			fmt.Fprintf(w, "%d\t%s\t%.0f\t%v\t%v\t%.2f\t%s\t\n", c, tg.name,
				median(field(rs, func(r result) float64 { return r.rate })),
				time.Duration(median(field(rs, func(r result) float64 { return float64(r.p50) }))).Round(time.Microsecond),
				time.Duration(median(field(rs, func(r result) float64 { return float64(r.p99) }))).Round(time.Microsecond),
				median(vsDirect), added)
		}
	}
	fmt.Fprintf(w, "medians of %d round(s) of %v per path and concurrency\n", runs, d)
	return w.Flush()
}

func field(rs []result, f func(result) float64) []float64 {
	out := make([]float64, len(rs))
	for i, r := range rs {
		out[i] = f(r)
	}
	return out
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// settle closes what a measurement leaves behind, the agents' idle
// connections and the goroutines serving them on every hop, and waits for
// those goroutines to end. The garbage collector scans every goroutine's
// stack in each cycle, and this benchmark collects often: without settling,
// each path would pay for the connections of the paths measured before it.
func settle() {
	pool.CloseIdleConnections()
	n, steady := runtime.NumGoroutine(), 0
	for i := 0; i < 200 && steady < 5; i++ {
		time.Sleep(5 * time.Millisecond)
		m := runtime.NumGoroutine()
		if m == n {
			steady++
		} else {
			n, steady = m, 0
		}
	}
	runtime.GC()
}

// upstreamServer has the tool every path calls: it answers at once, so
// what is measured is the path, not the tool.
func upstreamServer() *mcp.Server {
	props := map[string]any{}
	for _, name := range []string{"workspace_id", "cursor", "sort", "direction", "page_id", "path", "query"} {
		props[name] = map[string]any{"type": "string"}
	}
	for _, name := range []string{"limit", "offset"} {
		props[name] = map[string]any{"type": "integer"}
	}
	props["include_body"] = map[string]any{"type": "boolean"}
	props["filter"] = map[string]any{"type": "object", "properties": map[string]any{"owner": map[string]any{"type": "string"}}}
	props["tags"] = map[string]any{"type": "array", "items": map[string]any{"type": "string"}}
	s := mcp.NewServer(&mcp.Implementation{Name: "bench-upstream", Version: "1"}, nil)
	s.AddTool(&mcp.Tool{Name: "get_pages", InputSchema: map[string]any{"type": "object", "properties": props}},
		func(context.Context, *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "3 pages"}}}, nil
		})
	return s
}

// naiveProxy is the go-sdk's proxy pattern: a server whose tool forwards
// each call through a client session to the upstream. Each agent session
// gets its own upstream session, closed when the agent's ends.
func naiveProxy(ctx context.Context, upstream string) *mcp.Server {
	s := mcp.NewServer(&mcp.Implementation{Name: "naive-proxy", Version: "1"}, nil)
	var mu sync.Mutex
	sessions := map[*mcp.ServerSession]*mcp.ClientSession{}
	s.AddTool(&mcp.Tool{Name: "get_pages", InputSchema: map[string]any{"type": "object"}},
		func(ctx context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			mu.Lock()
			cs := sessions[req.Session]
			if cs == nil {
				var err error
				cs, err = mcp.NewClient(&mcp.Implementation{Name: "naive-proxy", Version: "1"}, nil).Connect(ctx,
					&mcp.StreamableClientTransport{Endpoint: upstream, HTTPClient: &http.Client{Transport: pool}}, nil)
				if err != nil {
					mu.Unlock()
					return nil, err
				}
				sessions[req.Session] = cs
				go func() {
					req.Session.Wait()
					mu.Lock()
					delete(sessions, req.Session)
					mu.Unlock()
					cs.Close()
				}()
			}
			mu.Unlock()
			return cs.CallTool(ctx, &mcp.CallToolParams{Name: "get_pages", Arguments: req.Params.Arguments})
		})
	return s
}

// reverseProxy is the least a gateway with one HTTP hop can cost: the
// standard library's reverse proxy, passing bytes through without looking
// at them. What it adds is the floor for AMG's added latency.
func reverseProxy(upstream string) (string, error) {
	target, err := url.Parse(upstream)
	if err != nil {
		return "", err
	}
	return listen(&httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) { r.SetURL(target); r.Out.URL.Path = target.Path },
		FlushInterval: -1, Transport: pool})
}

// serve serves s over Streamable HTTP.
func serve(s *mcp.Server) (string, error) {
	return listen(mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return s }, nil))
}

// listen serves h on a free loopback port and returns its MCP endpoint.
func listen(h http.Handler) (string, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	go http.Serve(lis, h)
	return "http://" + lis.Addr().String() + "/mcp", nil
}

func startAMG(ctx context.Context, upstream string) (url, token string, stop func(), err error) {
	dir, err := os.MkdirTemp("", "amg-bench")
	if err != nil {
		return "", "", nil, err
	}
	policyDir := filepath.Join(dir, "policies")
	if err := os.MkdirAll(policyDir, 0o700); err != nil {
		return "", "", nil, err
	}
	role := strings.Replace(decisiontest.BenchPolicy, "notion:", "bench:", 1)
	if err := os.WriteFile(filepath.Join(policyDir, "bench.yaml"), []byte(role), 0o600); err != nil {
		return "", "", nil, err
	}
	cfg := config.Default()
	cfg.Listen, cfg.AuthzListen, cfg.AdminListen = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.DataDir, cfg.PolicyDir = filepath.Join(dir, "data"), policyDir
	cfg.Upstreams = map[string]*config.Upstream{"bench": {Name: "bench", URL: upstream,
		ConnectTimeout: 5 * time.Second, CallTimeout: 30 * time.Second}}
	cfg.Names = []string{"bench"}
	gw, err := gateway.New(cfg, nil)
	if err != nil {
		return "", "", nil, err
	}
	if err := gw.Listen(); err != nil {
		return "", "", nil, err
	}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { gw.Serve(sctx); close(done) }()
	token, _, err = gw.IssueToken(ctx, "bench-agent", "bench", time.Hour)
	stop = func() {
		cancel()
		<-done
		gw.Close()
		os.RemoveAll(dir)
	}
	return "http://" + gw.MCPAddr() + config.MCPPath, token, stop, err
}

type bearer struct{ token string }

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	if b.token != "" {
		r = r.Clone(r.Context())
		r.Header.Set("Authorization", "Bearer "+b.token)
	}
	return pool.RoundTrip(r)
}

// pool is the HTTP transport of every client in the benchmark: the agents'
// and the naive proxy's. The default keeps two idle connections per host,
// so 32 concurrent sessions would mostly dial anew and measure that; AMG
// pools its upstream connections the same way.
var pool = func() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns, t.MaxIdleConnsPerHost = 1024, 256
	return t
}()

// measure runs c workers, each with its own session, calling tool for d
// after a warm-up, and returns calls/s and latency percentiles. The
// workers speak the newest protocol version with sessions: one without
// (2026-07-28, the go-sdk's default) would share its token's upstream
// sessions in AMG.
func measure(ctx context.Context, url, token, tool string, c int, d time.Duration) (rate float64, p50, p99 time.Duration, err error) {
	sessions := make([]*mcp.ClientSession, c)
	for i := range sessions {
		cs, err := mcp.NewClient(&mcp.Implementation{Name: "bench", Version: "1"}, nil).Connect(ctx,
			&mcp.StreamableClientTransport{Endpoint: url, HTTPClient: &http.Client{Transport: bearer{token}}},
			&mcp.ClientSessionOptions{ProtocolVersion: "2025-11-25"})
		if err != nil {
			return 0, 0, 0, err
		}
		defer cs.Close()
		sessions[i] = cs
	}
	call := func(cs *mcp.ClientSession) error {
		res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: tool, Arguments: args})
		if err == nil && res.IsError {
			err = fmt.Errorf("tool error: %v", res.Content)
		}
		return err
	}
	for _, cs := range sessions { // warm-up: connections, first decisions
		for range 20 {
			if err := call(cs); err != nil {
				return 0, 0, 0, err
			}
		}
	}
	var mu sync.Mutex
	var all []time.Duration
	var firstErr error
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	for _, cs := range sessions {
		wg.Go(func() {
			var lat []time.Duration
			for time.Now().Before(deadline) {
				start := time.Now()
				if err := call(cs); err != nil {
					mu.Lock()
					firstErr = err
					mu.Unlock()
					return
				}
				lat = append(lat, time.Since(start))
			}
			mu.Lock()
			all = append(all, lat...)
			mu.Unlock()
		})
	}
	wg.Wait()
	if firstErr != nil {
		return 0, 0, 0, firstErr
	}
	slices.Sort(all)
	return float64(len(all)) / d.Seconds(), all[len(all)/2], all[len(all)*99/100], nil
}
