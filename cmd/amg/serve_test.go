package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/modelcontextprotocol/go-sdk/mcp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/amgateway/amg/authz/authztest"
	"github.com/amgateway/amg/internal/audit"
	"github.com/amgateway/amg/internal/syncbuf"
	"github.com/amgateway/amg/internal/tokens"
	"github.com/amgateway/amg/xds"
)

// bearer adds the agent's token to every request of an MCP client.
type bearer struct{ token string }

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return http.DefaultTransport.RoundTrip(r)
}

// TestServe runs amg serve on its embedded defaults and talks to it as an
// agent does, with a real MCP client, and as Envoy does, over gRPC.
func TestServe(t *testing.T) {
	dataDir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Envoy is told where authz and the broker listen: ports fixed before
	// the start, as the xDS server cannot tell it of ones picked then.
	srv := startServe(t, ctx, "--policy-dir", "../../policies", "--data-dir", dataDir,
		"--authz-listen", freeAddr(t), "--broker-listen", freeAddr(t), "--xds-listen", "127.0.0.1:0")
	stderr, exited := srv.stderr, srv.exited
	m := regexp.MustCompile(`msg=serving mcp=(\S+) ext_authz=(\S+) admin=(\S+) broker=http://([^/\s]+)\S* xds=(\S+)`).FindStringSubmatch(srv.line)
	if m == nil {
		t.Fatalf("serve's log does not name its listeners: %s", srv.line)
	}
	mcpURL, authzAddr, adminURL, brokerAddr, xdsAddr := m[1], m[2], m[3], m[4], m[5]
	token := srv.token

	// An agent with the dev token (role notion_editor) over MCP.
	cs := connectDev(t, ctx, mcpURL, token)
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "notion__get_pages", Arguments: json.RawMessage(`{"workspace_id":"ws_abc123","limit":2}`)})
	if err != nil || res.IsError {
		t.Fatalf("allowed call: %v %+v", err, res)
	}
	if _, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "notion__search", Arguments: json.RawMessage(`{"query":"x","workspace_id":"ws_abc123"}`)}); err == nil ||
		!strings.Contains(err.Error(), `tool "notion__search" is not granted to role "notion_editor"`) {
		t.Errorf("ungranted call: %v", err)
	}
	cs.Close()

	// amg client, the CLI's MCP client, as the README uses it.
	client := func(args ...string) (int, string, string) {
		var out, errOut syncbuf.Buffer
		code := run(ctx, append([]string{"client", "--url", mcpURL, "--token", token}, args...), &out, &errOut)
		return code, out.String(), errOut.String()
	}
	if code, out, errOut := client("tools"); code != 0 || !strings.Contains(out, "notion__get_pages\t") || strings.Contains(out, "notion__search") {
		t.Errorf("amg client tools: exit %d\n%s%s", code, out, errOut)
	}
	if code, out, errOut := client("call", "notion__get_pages", `{"workspace_id":"ws_abc123","limit":2}`); code != 0 ||
		!strings.Contains(out, "2 pages in workspace ws_abc123") {
		t.Errorf("amg client call: exit %d\n%s%s", code, out, errOut)
	}
	if code, out, errOut := client("call", "notion__search", `{"query":"x","workspace_id":"ws_abc123"}`); code != 1 ||
		!strings.Contains(errOut, `"code": -32001`) || !strings.Contains(errOut, `"code": "not_granted"`) {
		t.Errorf("amg client call of an ungranted tool: exit %d\n%s%s", code, out, errOut)
	}

	// amg health, the container healthcheck, against the admin listener.
	var hout, herr syncbuf.Buffer
	if code := run(ctx, []string{"health", "--url", adminURL + "/readyz"}, &hout, &herr); code != 0 {
		t.Errorf("amg health on a ready gateway: exit %d: %s", code, herr.String())
	}
	if code := run(ctx, []string{"health", "--url", adminURL + "/nowhere"}, &hout, &herr); code != 1 || !strings.Contains(herr.String(), "404") {
		t.Errorf("amg health on a 404: exit %d: %s", code, herr.String())
	}

	// A call that needs approval waits; amg approvals, through the admin
	// API, lists and approves it, and the waiting agent gets the result.
	parked := make(chan string, 1)
	go func() {
		code, out, errOut := client("call", "notion__delete_page", `{"page_id":"pg_launch01a"}`)
		parked <- fmt.Sprintf("exit %d\n%s%s", code, out, errOut)
	}()
	approvals := func(args ...string) (int, string, string) {
		var out, errOut syncbuf.Buffer
		code := run(ctx, append([]string{"approvals", "--admin-url", adminURL, "--data-dir", dataDir}, args...), &out, &errOut)
		return code, out.String(), errOut.String()
	}
	var id string
	for deadline := time.Now().Add(30 * time.Second); id == "" && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		code, out, errOut := approvals("list")
		if code != 0 {
			t.Fatalf("amg approvals list: exit %d: %s", code, errOut)
		}
		if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) == 2 && strings.Contains(lines[1], "notion__delete_page") {
			id = strings.Fields(lines[1])[0]
		}
	}
	if id == "" {
		t.Fatal("amg approvals list never showed the parked call")
	}
	if code, out, errOut := approvals("approve", id, "--by", "alice", "--reason", "cleanup"); code != 0 || !strings.Contains(out, id+" approved by alice") {
		t.Fatalf("amg approvals approve: exit %d: %s%s", code, out, errOut)
	}
	if got := <-parked; !strings.HasPrefix(got, "exit 0") || !strings.Contains(got, "pg_launch01a") {
		t.Errorf("the approved call: %s", got)
	}
	if code, _, errOut := approvals("deny", id, "--by", "bob"); code != 1 || !strings.Contains(errOut, "no longer pending") {
		t.Errorf("denying an executed approval: exit %d: %s", code, errOut)
	}
	// What the operator types is a state or an id, never more of the URL.
	if code, out, errOut := approvals("list", "--state", "executed&state=pending"); code != 1 || !strings.Contains(errOut, "unknown state") {
		t.Errorf("listing by a state holding a query: exit %d: %s%s", code, out, errOut)
	}
	if code, out, errOut := approvals("show", "../status"); code != 1 {
		t.Errorf("showing the approval ../status: exit %d: %s%s", code, out, errOut)
	}

	// The operator's view: the console, where the log says it is, and the
	// admin endpoints.
	cm := regexp.MustCompile(`console=(\S+) admin_token=(\S+)`).FindStringSubmatch(stderr.String())
	if cm == nil || cm[1] != adminURL+"/console/" || cm[2] != filepath.Join(dataDir, "admin.token") {
		t.Errorf("serve's log = %q, want the console's URL and the admin token's file", cm)
	} else if resp, err := http.Get(cm[1]); err != nil {
		t.Error(err)
	} else {
		page, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(page), "Sign in") {
			t.Errorf("GET %s = %d, want the sign-in page", cm[1], resp.StatusCode)
		}
	}
	resp0, err := http.Get(adminURL + "/api/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Policy    struct{ Version string }
		Upstreams []struct {
			Name      string
			Connected bool
			Tools     int
		}
	}
	err = json.NewDecoder(resp0.Body).Decode(&st)
	resp0.Body.Close()
	if err != nil || st.Policy.Version == "" || len(st.Upstreams) != 1 || st.Upstreams[0].Name != "notion" ||
		!st.Upstreams[0].Connected || st.Upstreams[0].Tools != 5 {
		t.Errorf("admin status = %+v, %v; want the policy version and the connected demo upstream with its 5 tools", st, err)
	}

	// Envoy's configuration: the clusters over ADS, as Envoy asks for them.
	xconn, err := grpc.NewClient(xdsAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer xconn.Close()
	ads, err := discoveryv3.NewAggregatedDiscoveryServiceClient(xconn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := ads.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "envoy-1", Cluster: "amg"}, TypeUrl: resourcev3.ClusterType}); err != nil {
		t.Fatal(err)
	}
	cds, err := ads.Recv()
	if err != nil {
		t.Fatal(err)
	}
	// Envoy reaches authz and the broker where --authz-listen and
	// --broker-listen put them, not at the config's defaults.
	endpoints := map[string][]string{}
	for _, r := range cds.GetResources() {
		var c clusterv3.Cluster
		if err := r.UnmarshalTo(&c); err != nil {
			t.Fatal(err)
		}
		endpoints[c.GetName()] = []string{}
		for _, e := range c.GetLoadAssignment().GetEndpoints() {
			for _, lb := range e.GetLbEndpoints() {
				sa := lb.GetEndpoint().GetAddress().GetSocketAddress()
				endpoints[c.GetName()] = append(endpoints[c.GetName()], net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue()))))
			}
		}
	}
	for name, want := range map[string]string{xds.ClusterAuthz: authzAddr, xds.ClusterBroker: brokerAddr} {
		if got, ok := endpoints[name]; !ok || !slices.Equal(got, []string{want}) {
			t.Errorf("cluster %s over ADS sends Envoy to %v (present: %v); amg listens on %s", name, got, ok, want)
		}
	}
	ads.CloseSend()

	// Envoy's view: a Check over gRPC.
	conn, err := grpc.NewClient(authzAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hdrs := map[string]string{"authorization": "Bearer " + token, "mcp-protocol-version": "2025-06-18"}
	body := `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"notion__get_pages","arguments":{"workspace_id":"ws_abc123"}}}`
	resp, err := authv3.NewAuthorizationClient(conn).Check(ctx, authztest.EnvoyRequest("POST", hdrs, body))
	if err != nil || resp.GetOkResponse() == nil {
		t.Fatalf("Check over gRPC: %v %v", resp.GetDeniedResponse(), err)
	}

	cancel()
	select {
	case code := <-exited:
		if code != 0 {
			t.Fatalf("serve exited with %d after shutdown:\n%s", code, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not shut down")
	}
	res2, err := audit.Verify(filepath.Join(dataDir, audit.FileName))
	if err != nil || res2.Records < 5 {
		t.Errorf("audit log after shutdown: %+v %v; want every decision recorded and the chain intact", res2, err)
	}
}

// TestServeStartsFromTheExamples runs amg serve where there is no
// policy directory, as someone who installed the binary might: it writes
// the example roles into ./policies and serves them.
func TestServeStartsFromTheExamples(t *testing.T) {
	repoPolicies, err := filepath.Abs("../../policies")
	if err != nil {
		t.Fatal(err)
	}
	t.Chdir(t.TempDir())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv := startServe(t, ctx)
	m := regexp.MustCompile(`msg=serving mcp=(\S+)`).FindStringSubmatch(srv.line)
	if m == nil {
		t.Fatalf("serve's log does not name its MCP endpoint: %s", srv.line)
	}
	connectDev(t, ctx, m[1], srv.token).Close()
	if !strings.Contains(srv.stderr.String(), "wrote the example roles into it") {
		t.Errorf("serve did not say it wrote the example roles:\n%s", srv.stderr.String())
	}
	examples, err := filepath.Glob(filepath.Join(repoPolicies, "*.yaml"))
	if err != nil || len(examples) == 0 {
		t.Fatalf("no example roles in %s: %v", repoPolicies, err)
	}
	written, _ := filepath.Glob(filepath.Join("policies", "*.yaml"))
	if len(written) != len(examples) {
		t.Errorf("wrote %v, want one file per example in %s", written, repoPolicies)
	}
	for _, ex := range examples {
		want, _ := os.ReadFile(ex)
		if got, err := os.ReadFile(filepath.Join("policies", filepath.Base(ex))); err != nil || string(got) != string(want) {
			t.Errorf("policies/%s differs from the example (%v)", filepath.Base(ex), err)
		}
	}
	cancel()
	if code := <-srv.exited; code != 0 {
		t.Fatalf("serve exited with %d:\n%s", code, srv.stderr.String())
	}
}

// A policy directory that exists is the operator's: serve neither fills
// nor changes it, and with no role in it, everything is denied.
func TestServeLeavesAPolicyDirectoryAlone(t *testing.T) {
	t.Chdir(t.TempDir())
	if err := os.Mkdir("policies", 0o700); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv := startServe(t, ctx)
	if entries, err := os.ReadDir("policies"); err != nil || len(entries) != 0 {
		t.Errorf("policies/ now holds %v (%v), want it left empty", entries, err)
	}
	if !strings.Contains(srv.stderr.String(), "no role files") || !strings.Contains(srv.stderr.String(), "--dev-role not checked") {
		t.Errorf("serve's log does not report the empty policy directory, and that the dev role went unchecked:\n%s", srv.stderr.String())
	}
	// The agent learns why from its first request.
	m := regexp.MustCompile(`msg=serving mcp=(\S+)`).FindStringSubmatch(srv.line)
	if m == nil {
		t.Fatalf("serve's log does not name its MCP endpoint: %s", srv.line)
	}
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "agent", Version: "1"}, nil).Connect(ctx,
		&mcp.StreamableClientTransport{Endpoint: m[1], HTTPClient: &http.Client{Transport: bearer{srv.token}}}, nil)
	if err == nil {
		cs.Close()
		t.Error("an agent could initialize with no policy loaded")
	} else if !strings.Contains(err.Error(), "no policy is loaded") {
		t.Errorf("initialize with no policy loaded: %v", err)
	}
	cancel()
	<-srv.exited
}

// served is an amg serve running for a test.
type served struct {
	line   string // the log line naming the listeners
	token  string // the --dev token
	stderr *syncbuf.Buffer
	exited <-chan int
}

// freeAddr is a loopback address with a port free when it returns.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startServe runs amg serve --dev with args, every listener on a free
// loopback port, until ctx ends, and waits until it serves.
func startServe(t *testing.T, ctx context.Context, args ...string) served {
	t.Helper()
	var stdout, stderr syncbuf.Buffer
	exited := make(chan int, 1)
	args = append([]string{"serve", "--dev", "--listen", "127.0.0.1:0", "--authz-listen", "127.0.0.1:0",
		"--admin-listen", "127.0.0.1:0"}, args...)
	go func() { exited <- run(ctx, args, &stdout, &stderr) }()
	lineRE := regexp.MustCompile(`msg=serving .*`)
	var line string
	for deadline := time.Now().Add(30 * time.Second); line == "" && time.Now().Before(deadline); {
		select {
		case code := <-exited:
			t.Fatalf("serve exited with %d:\n%s", code, stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
		line = lineRE.FindString(stderr.String())
	}
	if line == "" {
		t.Fatalf("serve did not start:\n%s", stderr.String())
	}
	token := strings.TrimSpace(stdout.String())
	if !regexp.MustCompile(`^amg_[0-9a-f]{64}$`).MatchString(token) {
		t.Fatalf("--dev printed %q, want a token alone", token)
	}
	return served{line: line, token: token, stderr: &stderr, exited: exited}
}

// connectDev connects an MCP client with the dev token (role
// notion_editor) and checks that it sees exactly the tools the example
// role grants.
func connectDev(t *testing.T, ctx context.Context, mcpURL, token string) *mcp.ClientSession {
	t.Helper()
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "agent", Version: "1"}, nil).Connect(ctx,
		&mcp.StreamableClientTransport{Endpoint: mcpURL, HTTPClient: &http.Client{Transport: bearer{token}}}, nil)
	if err != nil {
		t.Fatalf("MCP client cannot connect: %v", err)
	}
	list, err := cs.ListTools(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tool := range list.Tools {
		names = append(names, tool.Name)
	}
	slices.Sort(names)
	// search and update_page are not granted to notion_editor: invisible.
	if want := []string{"notion__create_page", "notion__delete_page", "notion__get_pages"}; !slices.Equal(names, want) {
		t.Errorf("tools = %v, want %v", names, want)
	}
	return cs
}

// The --dev token is the run's: a gateway that shuts down revokes it, so
// that it does not outlive the process that printed it.
func TestServeRevokesTheDevTokenAtShutdown(t *testing.T) {
	dataDir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	srv := startServe(t, ctx, "--policy-dir", "../../policies", "--data-dir", dataDir)
	cancel()
	if code := <-srv.exited; code != 0 {
		t.Fatalf("serve exited with %d:\n%s", code, srv.stderr.String())
	}
	d, err := tokens.Parse(srv.token)
	if err != nil {
		t.Fatal(err)
	}
	code, out, stderr := runCLI(t, "token", "list", "--data-dir", dataDir)
	if code != 0 {
		t.Fatalf("token list: exit %d: %s", code, stderr)
	}
	var line string
	for l := range strings.Lines(out) {
		if strings.HasPrefix(l, d.ID()) {
			line = strings.TrimSpace(l)
		}
	}
	if !strings.HasSuffix(line, "revoked") {
		t.Errorf("the dev token of a gateway that shut down: %q, want it revoked; token list:\n%s", line, out)
	}
}

// serveRefused runs amg serve with args, which must refuse to start, and
// returns its exit code and stderr; one that serves instead is stopped
// and fails the test.
func serveRefused(t *testing.T, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr syncbuf.Buffer
	exited := make(chan int, 1)
	go func() { exited <- run(ctx, append([]string{"serve"}, args...), &stdout, &stderr) }()
	for {
		select {
		case code := <-exited:
			return code, stderr.String()
		case <-time.After(20 * time.Millisecond):
			if strings.Contains(stderr.String(), "msg=serving") {
				cancel()
				<-exited
				t.Fatalf("serve %q started:\n%s", args, stderr.String())
			}
		}
	}
}

// Where the xDS server would tell Envoy that authz or the broker listens
// on port 0, a port picked at start, serve refuses and says why.
func TestServeRefusesXDSWithListenersOnPortsPickedAtStart(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "data")
	code, stderr := serveRefused(t, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--xds-listen", "127.0.0.1:0",
		"--authz-listen", "127.0.0.1:0", "--broker-listen", "127.0.0.1:0", "--policy-dir", "../../policies", "--data-dir", dataDir)
	want := "amg: authz_listen: 127.0.0.1:0 takes a free port at each start, which the xDS server cannot tell Envoy: give it a port, or set envoy.authz_address\n" +
		"broker_listen: 127.0.0.1:0 takes a free port at each start, which the xDS server cannot tell Envoy: give it a port, or set envoy.broker_addresses\n"
	if code != 1 || stderr != want {
		t.Errorf("exit %d, stderr:\n%s\nwant:\n%s", code, stderr, want)
	}
	if _, err := os.Stat(dataDir); err == nil {
		t.Error("the refused serve created its data directory")
	}
}

// With an xDS server, what the loader would take for a gateway without
// one but Envoy cannot be told is a problem of the file, reported at its
// line with the others, and serve opens nothing in its data directory.
func TestServeRefusesWhatEnvoyCannotBeTold(t *testing.T) {
	for name, tc := range map[string]struct{ body, want string }{
		"upstream port out of range": {"upstreams:\n  n:\n    url: https://mcp.example:99999/mcp\n",
			":6:10: upstreams.n.url: port must be a number from 1 to 65535"},
		"envoy listening on a host name": {"envoy:\n  listen: envoy:10000\n",
			":5:11: envoy.listen: envoy:10000: Envoy listens on IP addresses only"},
		"body limit over 32 bits": {"max_body_bytes: 5000000000\n",
			":4:17: max_body_bytes: must be at most 4294967294 with xds_listen"},
		"broker on port 0": {"envoy:\n  broker_addresses: [\"amg:0\"]\n",
			":5:22: envoy.broker_addresses[0]: amg:0: port 0 cannot be connected to"},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "amg.yaml")
			writeFile(t, path, "xds_listen: 127.0.0.1:0\nauthz_listen: "+freeAddr(t)+"\nbroker_listen: "+freeAddr(t)+"\n"+tc.body)
			dataDir := filepath.Join(dir, "data")
			code, stderr := serveRefused(t, "--config", path, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
				"--policy-dir", "../../policies", "--data-dir", dataDir)
			if code != 1 || !strings.Contains(stderr, path+tc.want) || !strings.Contains(stderr, "1 problem in "+path+"; not starting") {
				t.Errorf("exit %d, stderr:\n%s\nwant it to say %s%s", code, stderr, path, tc.want)
			}
			if _, err := os.Stat(dataDir); err == nil {
				t.Error("the refused serve created its data directory")
			}
		})
	}
}

// A second amg serve on the data directory of a running one, on other
// ports, would append a second hash chain to its audit.log: it refuses to
// start, naming the directory, and the first one's chain stays whole.
func TestServeRefusesADataDirInUse(t *testing.T) {
	dataDir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv := startServe(t, ctx, "--policy-dir", "../../policies", "--data-dir", dataDir)

	code, stderr := serveRefused(t, "--listen", "127.0.0.1:0", "--authz-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
		"--policy-dir", "../../policies", "--data-dir", dataDir)
	want := "amg: data directory " + dataDir + " is in use by another amg serve (process " + strconv.Itoa(os.Getpid()) +
		", which holds " + filepath.Join(dataDir, "amg.lock") + "): give each gateway a data directory of its own\n"
	if code != 1 || stderr != want {
		t.Errorf("second serve: exit %d, stderr:\n%s\nwant:\n%s", code, stderr, want)
	}
	cancel()
	if code := <-srv.exited; code != 0 {
		t.Fatalf("first serve exited with %d:\n%s", code, srv.stderr.String())
	}
	if code, out, stderr := runCLI(t, "audit", "verify", "--data-dir", dataDir); code != 0 {
		t.Errorf("amg audit verify: exit %d: %s%s", code, out, stderr)
	}
}

// With a config's Redis, every replica sharing it would honour a --dev
// token: serve refuses before it connects to anything.
func TestServeRefusesDevWithRedis(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "amg.yaml")
	writeFile(t, path, "redis:\n  address: 127.0.0.1:1\n")
	code, stdout, stderr := runCLI(t, "serve", "--dev", "--config", path, "--data-dir", filepath.Join(dir, "data"))
	want := "amg: --dev: every replica sharing the Redis that " + path + " names would honour the dev token; issue a token with amg token issue --redis instead\n"
	if code != 1 || stdout != "" || stderr != want {
		t.Errorf("exit %d, stdout %q, stderr:\n%s\nwant:\n%s", code, stdout, stderr, want)
	}
	if _, err := os.Stat(filepath.Join(dir, "data")); err == nil {
		t.Error("the refused serve created its data directory")
	}
}

// A --dev token for a role the policy does not define would be denied
// everything for its 24 hours: serve refuses to start, as amg token issue
// refuses such a role, and issues nothing.
func TestServeRefusesAnUndefinedDevRole(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"a role the policy does not define", []string{"--dev", "--dev-role", "notion_edtor"},
			"amg: --dev-role: role \"notion_edtor\" is not defined in ../../policies (roles: notion_editor, notion_read, support_shadow)\n"},
		{"--dev-role without --dev", []string{"--dev-role", "notion_read"},
			"amg: --dev-role is the role of the --dev token: give --dev too\n"},
	}
	// The refusal comes before serve binds its listeners: a port already
	// taken is not what it reports.
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dataDir := t.TempDir()
			// Without the refusal, serve would run until this ends.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var stdout, stderr syncbuf.Buffer
			code := run(ctx, append([]string{"serve", "--listen", taken.Addr().String(), "--authz-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
				"--policy-dir", "../../policies", "--data-dir", dataDir}, tt.args...), &stdout, &stderr)
			if code != 1 || stdout.String() != "" || !strings.HasSuffix(stderr.String(), tt.want) {
				t.Errorf("exit %d, stdout %q, stderr:\n%s\nwant it to end:\n%s", code, stdout.String(), stderr.String(), tt.want)
			}
			if _, out, _ := runCLI(t, "token", "list", "--data-dir", dataDir); strings.Contains(out, "dev") {
				t.Errorf("a token was issued:\n%s", out)
			}
		})
	}
}

func TestServeRefusesABadConfig(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "amg.yaml")
	writeFile(t, path, "listen: nowhere\nupstreams:\n  bad__name: { builtin: demo }\n")
	code, _, stderr := runCLI(t, "serve", "--config", path, "--data-dir", dir)
	if code != 1 || !strings.Contains(stderr, path+":1:9: listen:") || !strings.Contains(stderr, path+":3:3: upstreams.bad__name") ||
		!strings.Contains(stderr, "2 problems in "+path+"; not starting") {
		t.Errorf("exit %d, stderr:\n%s", code, stderr)
	}
}

// Vault's own credentials are checked with the file's other secret
// references and problems: each one that is wrong is reported with its
// place, all at once, before Vault is contacted.
func TestServeReportsVaultCredentialProblems(t *testing.T) {
	t.Setenv("AMG_TEST_UNSET", "")
	os.Unsetenv("AMG_TEST_UNSET")
	t.Setenv("AMG_TEST_VAULT_TOKEN", "planted-vault-token")
	dir := t.TempDir()
	missing := filepath.Join(dir, "no-secret-id")
	for _, tc := range []struct {
		name, src string
		want      []string
	}{
		{"token unset, and a bad listener", `listen: nowhere
vault:
  address: http://127.0.0.1:1
  token: "${env:AMG_TEST_UNSET}"
`, []string{
			":1:9: listen: must be host:port",
			":4:10: vault.token: env:AMG_TEST_UNSET is not set",
		}},
		{"secret id missing, and an upstream credential unset", `vault:
  address: http://127.0.0.1:1
  approle:
    role_id: amg
    secret_id: "${file:` + filepath.ToSlash(missing) + `}"
upstreams:
  a:
    url: https://mcp.example/mcp
    headers:
      Authorization: "Bearer ${env:AMG_TEST_UNSET}"
`, []string{
			":5:16: vault.approle.secret_id: file:" + filepath.ToSlash(missing),
			":10:22: upstreams.a.headers.Authorization: env:AMG_TEST_UNSET is not set",
		}},
		{"cache ttl and address, and the token unset", `vault:
  address: https://vault.example:8200/?token=x
  token: "${env:AMG_TEST_UNSET}"
  cache_ttl: 1h
`, []string{
			":2:12: vault.address: must not have a query or fragment",
			":3:10: vault.token: env:AMG_TEST_UNSET is not set",
			":4:14: vault.cache_ttl: must be at most 10m0s",
		}},
		{"vault unreachable", `vault:
  address: http://127.0.0.1:1
  token: "${env:AMG_TEST_VAULT_TOKEN}"
`, []string{
			":2:3: vault: ",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "amg.yaml")
			writeFile(t, path, tc.src)
			code, _, stderr := runCLI(t, "serve", "--config", path, "--data-dir", dir)
			if code != 1 {
				t.Errorf("exit %d, want 1", code)
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr, path+w) {
					t.Errorf("stderr does not say %q:\n%s", path+w, stderr)
				}
			}
			if want := fmt.Sprintf("%d problem%s in %s; not starting", len(tc.want), plural(len(tc.want)), path); !strings.Contains(stderr, want) {
				t.Errorf("stderr does not say %q:\n%s", want, stderr)
			}
			if strings.Contains(stderr, "planted-vault-token") {
				t.Errorf("stderr shows Vault's token:\n%s", stderr)
			}
		})
	}
}

// Every flag of amg serve is in the README, beside the config keys.
func TestREADMEShowsEveryServeFlag(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	usage := newServeCmd().Flags().FlagUsages()
	for _, flag := range regexp.MustCompile(`(?m)^\s+(?:-\w, )?(--[\w-]+)`).FindAllStringSubmatch(usage, -1) {
		if !strings.Contains(string(readme), flag[1]) {
			t.Errorf("the README never shows %s", flag[1])
		}
	}
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}
