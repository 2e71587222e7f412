package deploy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	heapv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/resource_monitors/fixed_heap/v3"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/proto"

	"github.com/amgateway/amg/envoy"
	"github.com/amgateway/amg/internal/config"
	"github.com/amgateway/amg/internal/policy"
	"github.com/amgateway/amg/internal/secrets"
)

// root is the repository root, relative to this package's directory.
const root = ".."

func readFile(t *testing.T, rel string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(rel)))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func parseConfig(t *testing.T, name string, data []byte) *config.Config {
	t.Helper()
	// nil Options: the secret references are checked for syntax only,
	// not resolved.
	cfg, err := config.Parse(name, data, nil)
	if err != nil {
		t.Fatalf("%s does not load:\n%v", name, err)
	}
	return cfg
}

func parseBootstrap(t *testing.T, name string, data []byte) *bootstrapv3.Bootstrap {
	t.Helper()
	b, err := envoy.ParseBootstrap(data)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return b
}

// heapLimit is the heap size the bootstrap's overload manager measures
// Envoy's heap against.
func heapLimit(t *testing.T, b *bootstrapv3.Bootstrap) uint64 {
	t.Helper()
	for _, m := range b.GetOverloadManager().GetResourceMonitors() {
		heap := &heapv3.FixedHeapConfig{}
		if m.GetTypedConfig().UnmarshalTo(heap) == nil {
			return heap.GetMaxHeapSizeBytes()
		}
	}
	t.Fatal("the bootstrap's overload manager has no fixed_heap monitor")
	return 0
}

// memoryBytes reads a Kubernetes memory quantity in bytes or in
// binary units (Ki, Mi, Gi).
func memoryBytes(q string) (uint64, bool) {
	unit := uint64(1)
	for suffix, u := range map[string]uint64{"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30} {
		if n, ok := strings.CutSuffix(q, suffix); ok {
			q, unit = n, u
		}
	}
	n, err := strconv.ParseUint(q, 10, 64)
	return n * unit, err == nil && n > 0
}

func splitAddr(t *testing.T, what, addr string) (string, int) {
	t.Helper()
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("%s %q: %v", what, addr, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("%s %q: port: %v", what, addr, err)
	}
	return host, n
}

func listenPort(t *testing.T, what, addr string) int {
	t.Helper()
	if addr == "" {
		t.Fatalf("%s is off; Envoy mode needs it", what)
	}
	_, p := splitAddr(t, what, addr)
	return p
}

// flagValue returns the value of --name in args ("--name v" or "--name=v").
func flagValue(args []string, name string) (string, bool) {
	for i, a := range args {
		if a == name && i+1 < len(args) {
			return args[i+1], true
		}
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v, true
		}
	}
	return "", false
}

// splitImage splits an image reference into repository and tag; a digest
// is kept with the tag.
func splitImage(image string) (repo, tag string) {
	slash := strings.LastIndexByte(image, '/')
	colon := strings.LastIndexByte(image, ':')
	if at := strings.IndexByte(image, '@'); at >= 0 {
		colon = strings.LastIndexByte(image[:at], ':')
	}
	if colon > slash {
		return image[:colon], image[colon+1:]
	}
	return image, ""
}

// checkPinned reports an image without a tag, or tagged latest; one pulled
// from a registry (not built here) must name a version.
func checkPinned(t *testing.T, where, image string, builtHere bool) {
	t.Helper()
	_, tag := splitImage(image)
	switch {
	case image == "":
		t.Errorf("%s: no image", where)
	case tag == "" || tag == "latest":
		t.Errorf("%s: image %q is not pinned to a version", where, image)
	case !builtHere && !strings.ContainsAny(tag, "0123456789"):
		t.Errorf("%s: image %q: tag %q names no version", where, image, tag)
	}
}

// version returns the leading dotted numbers of an image tag: v1.39.6 ->
// [1 39 6], 7.2.5-alpine -> [7 2 5].
func version(tag string) []int {
	tag = strings.TrimPrefix(tag, "v")
	if i := strings.IndexFunc(tag, func(r rune) bool { return r != '.' && (r < '0' || r > '9') }); i >= 0 {
		tag = tag[:i]
	}
	var v []int
	for f := range strings.SplitSeq(tag, ".") {
		n, err := strconv.Atoi(f)
		if err != nil {
			break
		}
		v = append(v, n)
	}
	return v
}

func TestVersion(t *testing.T) {
	for tag, want := range map[string][]int{"v1.39.6": {1, 39, 6}, "7.2.5-alpine": {7, 2, 5}, "1.13.2": {1, 13, 2}, "nonroot": nil} {
		if got := version(tag); !slices.Equal(got, want) {
			t.Errorf("version(%q) = %v, want %v", tag, got, want)
		}
	}
	for image, want := range map[string][2]string{
		"redis:7.2.5-alpine":         {"redis", "7.2.5-alpine"},
		"localhost:5000/amg":         {"localhost:5000/amg", ""},
		"localhost:5000/amg:1.0":     {"localhost:5000/amg", "1.0"},
		"envoyproxy/envoy@sha256:ab": {"envoyproxy/envoy@sha256:ab", ""},
	} {
		if r, tg := splitImage(image); r != want[0] || tg != want[1] {
			t.Errorf("splitImage(%q) = %q, %q, want %q, %q", image, r, tg, want[0], want[1])
		}
	}
}

// checkLicensedImage checks the images whose licence changed with a
// version: Vault after 1.13 is BUSL, Redis from 7.4 on is not BSD.
func checkLicensedImage(t *testing.T, where, image string) {
	t.Helper()
	repo, tag := splitImage(image)
	limits := map[string][]int{"vault": {1, 14}, "redis": {7, 4}}
	limit, ok := limits[path.Base(repo)]
	if !ok {
		return
	}
	if v := version(tag); len(v) == 0 || slices.Compare(v, limit) >= 0 {
		t.Errorf("%s: image %q: want a version below %v (licence)", where, image, limit)
	}
}

// checkEnvoyTarget checks that the bootstrap's amg_xds cluster points at
// host on cfg's xDS port.
func checkXDSCluster(t *testing.T, b *bootstrapv3.Bootstrap, host string, cfg *config.Config) {
	t.Helper()
	h, p, err := envoy.StaticClusterAddress(b, "amg_xds")
	if err != nil {
		t.Fatal(err)
	}
	if want := listenPort(t, "xds_listen", cfg.XDSListen); h != host || int(p) != want {
		t.Errorf("envoy amg_xds cluster is %s:%d, want %s:%d (the amg service and its xds_listen port)", h, p, host, want)
	}
}

// checkEnvoyAddresses checks that the addresses the xDS server hands Envoy
// name host on the ports amg listens on.
func checkEnvoyAddresses(t *testing.T, cfg *config.Config, authzHost string, brokerAddrs []string) {
	t.Helper()
	authzPort := listenPort(t, "authz_listen", cfg.AuthzListen)
	if h, p := splitAddr(t, "envoy.authz_address", cfg.Envoy.AuthzAddress); h != authzHost || p != authzPort {
		t.Errorf("envoy.authz_address = %s, want %s:%d", cfg.Envoy.AuthzAddress, authzHost, authzPort)
	}
	if !slices.Equal(cfg.Envoy.BrokerAddresses, brokerAddrs) {
		t.Errorf("envoy.broker_addresses = %v, want %v", cfg.Envoy.BrokerAddresses, brokerAddrs)
	}
}

// checkUpstream checks that upstream name is served at host:port/mcp.
func checkUpstream(t *testing.T, cfg *config.Config, name, host string, port int) {
	t.Helper()
	u := cfg.Upstreams[name]
	if u == nil {
		t.Fatalf("no upstream %q; have %v", name, cfg.Names)
	}
	pu, err := url.Parse(u.URL)
	if err != nil {
		t.Fatal(err)
	}
	if pu.Hostname() != host || pu.Port() != strconv.Itoa(port) || pu.Path != config.MCPPath {
		t.Errorf("upstream %s url %s, want http://%s:%d%s", name, u.URL, host, port, config.MCPPath)
	}
}

// checkPolicies compiles the role files against cfg's upstream names, as
// amg does at startup.
func checkPolicies(t *testing.T, files []policy.File, cfg *config.Config) {
	t.Helper()
	if _, err := policy.Compile(files, &policy.Options{Servers: cfg.Names}); err != nil {
		t.Errorf("policies do not compile against upstreams %v:\n%v", cfg.Names, err)
	}
}

func repoPolicies(t *testing.T) map[string][]byte {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(root, "policies", "*.yaml"))
	if err != nil || len(names) == 0 {
		t.Fatalf("no policies/*.yaml (%v)", err)
	}
	files := map[string][]byte{}
	for _, n := range names {
		data, err := os.ReadFile(n)
		if err != nil {
			t.Fatal(err)
		}
		files[filepath.Base(n)] = data
	}
	return files
}

func policyFiles(dir string, files map[string][]byte) []policy.File {
	var out []policy.File
	for _, name := range slices.Sorted(maps.Keys(files)) {
		out = append(out, policy.File{Name: path.Join(dir, name), Data: files[name]})
	}
	return out
}

// headerRefs returns the secret references in every upstream header.
func headerRefs(cfg *config.Config) []secrets.Ref {
	var refs []secrets.Ref
	for _, name := range cfg.Names {
		u := cfg.Upstreams[name]
		for _, h := range slices.Sorted(maps.Keys(u.Headers)) {
			refs = append(refs, u.Headers[h].Refs()...)
		}
	}
	return refs
}

// vaultTokenRefs returns the reference Vault's own token is read from,
// which these deployments keep in an environment variable: vault.token
// must be exactly one ${env:NAME}.
func vaultTokenRefs(t *testing.T, cfg *config.Config) []secrets.Ref {
	t.Helper()
	if cfg.Vault.Address == "" {
		t.Fatal("no vault section: amg cannot read the vault: references")
	}
	refs := cfg.Vault.Token.Refs()
	if len(refs) != 1 || refs[0].Scheme != secrets.SchemeEnv || cfg.Vault.Token.String() != "${"+refs[0].String()+"}" {
		t.Errorf("vault.token %q, want a single ${env:NAME} reference", cfg.Vault.Token.String())
	}
	return refs
}

// dockerfile is what the tests need of the Dockerfile.
type dockerfile struct {
	froms      []string
	user       string
	entrypoint string
	exposed    []int
}

func parseDockerfile(t *testing.T) dockerfile {
	t.Helper()
	var d dockerfile
	var logical string
	sc := bufio.NewScanner(bytes.NewReader(readFile(t, "Dockerfile")))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if cont, ok := strings.CutSuffix(line, `\`); ok {
			logical += cont + " "
			continue
		}
		logical += line
		fields := strings.Fields(logical)
		logical = ""
		switch strings.ToUpper(fields[0]) {
		case "FROM":
			d.froms = append(d.froms, fields[1])
		case "USER":
			d.user = fields[1]
		case "ENTRYPOINT":
			d.entrypoint = strings.Join(fields[1:], " ")
		case "EXPOSE":
			for _, f := range fields[1:] {
				n, err := strconv.Atoi(strings.TrimSuffix(f, "/tcp"))
				if err != nil {
					t.Fatalf("EXPOSE %s: %v", f, err)
				}
				d.exposed = append(d.exposed, n)
			}
		}
	}
	return d
}

func TestDockerfile(t *testing.T) {
	d := parseDockerfile(t)
	if len(d.froms) < 2 {
		t.Fatalf("FROM %v: want a build stage and a runtime stage", d.froms)
	}
	if repo, tag := splitImage(d.froms[0]); repo != "golang" || !strings.HasPrefix(tag, "1.26") {
		t.Errorf("build stage FROM %s, want golang:1.26 (go.mod's Go)", d.froms[0])
	}
	if final := d.froms[len(d.froms)-1]; !strings.HasPrefix(final, "gcr.io/distroless/static") || !strings.HasSuffix(final, ":nonroot") {
		t.Errorf("runtime stage FROM %s, want distroless static, nonroot", final)
	}
	uid, _, _ := strings.Cut(d.user, ":")
	if n, err := strconv.Atoi(uid); err != nil || n == 0 {
		t.Errorf("USER %q, want a numeric non-root uid (Kubernetes runAsNonRoot can check only a number)", d.user)
	}
	if d.entrypoint != `["/amg"]` {
		t.Errorf(`ENTRYPOINT %s, want ["/amg"]`, d.entrypoint)
	}
	cfg := parseConfig(t, "deploy/amg.yaml", readFile(t, "deploy/amg.yaml"))
	for what, addr := range map[string]string{"listen": cfg.Listen, "admin_listen": cfg.AdminListen,
		"authz_listen": cfg.AuthzListen, "broker_listen": cfg.BrokerListen, "xds_listen": cfg.XDSListen} {
		if p := listenPort(t, what, addr); !slices.Contains(d.exposed, p) {
			t.Errorf("deploy/amg.yaml %s port %d is not in the Dockerfile's EXPOSE %v", what, p, d.exposed)
		}
	}

	ignore := strings.Fields(string(readFile(t, ".dockerignore")))
	for _, want := range []string{".git", "data/", "bin/"} {
		if !slices.Contains(ignore, want) {
			t.Errorf(".dockerignore does not exclude %s", want)
		}
	}
}

// TestAMGConfig loads deploy/amg.yaml as amg serve would, short of
// resolving its secrets.
func TestAMGConfig(t *testing.T) {
	cfg := parseConfig(t, "deploy/amg.yaml", readFile(t, "deploy/amg.yaml"))
	if cfg.BrokerListen == "" || cfg.XDSListen == "" {
		t.Errorf("broker_listen %q, xds_listen %q: Envoy mode needs both", cfg.BrokerListen, cfg.XDSListen)
	}
	if cfg.Envoy.EgressListen != "" {
		t.Errorf("envoy.egress_listen = %q, want off: the broker reaches the demo directly", cfg.Envoy.EgressListen)
	}
	if len(headerRefs(cfg)) == 0 {
		t.Error("no upstream header takes a secret reference")
	}
	checkSharedKeys(t, "deploy/amg.yaml", cfg)
	for _, r := range vaultRefs(cfg) {
		// amg reads the upstream tokens and shared keys from Vault itself.
		if r.Scheme != secrets.SchemeVault {
			t.Errorf("%s: want a vault: reference", r)
		}
	}
	vaultTokenRefs(t, cfg)
	checkPolicies(t, policyFiles("policies", repoPolicies(t)), cfg)
}

func loadCompose(t *testing.T) *types.Project {
	t.Helper()
	abs, err := filepath.Abs(root)
	if err != nil {
		t.Fatal(err)
	}
	data := readFile(t, "docker-compose.yml")
	// The file must work without a .env or exported variables: the test
	// gives it an empty environment and refuses ${...} in any value
	// outright, rather than let interpolation quietly produce empty ones.
	var raw any
	if err := yaml.Unmarshal(data, &raw); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	walkStrings(raw, func(s string) {
		if strings.Contains(s, "${") {
			t.Errorf("docker-compose.yml interpolates in %q; it must run without variables set", s)
		}
	})
	details := types.ConfigDetails{
		WorkingDir:  abs,
		ConfigFiles: []types.ConfigFile{{Filename: filepath.Join(abs, "docker-compose.yml"), Content: data}},
		Environment: types.Mapping{},
	}
	p, err := loader.LoadWithContext(t.Context(), details, func(o *loader.Options) {
		o.SetProjectName("amg", true)
	})
	if err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	return p
}

// walkStrings calls f with every string key and value in v.
func walkStrings(v any, f func(string)) {
	switch v := v.(type) {
	case string:
		f(v)
	case map[string]any:
		for k, x := range v {
			f(k)
			walkStrings(x, f)
		}
	case []any:
		for _, x := range v {
			walkStrings(x, f)
		}
	}
}

func service(t *testing.T, p *types.Project, name string) types.ServiceConfig {
	t.Helper()
	s, ok := p.Services[name]
	if !ok {
		t.Fatalf("docker-compose.yml has no service %q", name)
	}
	return s
}

// mount returns the volume of s mounted at target.
func mount(s types.ServiceConfig, target string) (types.ServiceVolumeConfig, bool) {
	for _, v := range s.Volumes {
		if v.Target == target {
			return v, true
		}
	}
	return types.ServiceVolumeConfig{}, false
}

// checkBind checks that s mounts the repository file rel at target.
func checkBind(t *testing.T, s types.ServiceConfig, rel, target string) {
	t.Helper()
	v, ok := mount(s, target)
	abs, err := filepath.Abs(filepath.Join(root, filepath.FromSlash(rel)))
	if err != nil {
		t.Fatal(err)
	}
	if !ok || v.Type != types.VolumeTypeBind || filepath.Clean(v.Source) != abs {
		t.Errorf("service %s: want ./%s mounted at %s, have %+v", s.Name, rel, target, s.Volumes)
	}
	if ok && !v.ReadOnly {
		t.Errorf("service %s: %s is mounted writable", s.Name, target)
	}
}

func TestCompose(t *testing.T) {
	p := loadCompose(t)
	cfg := parseConfig(t, "deploy/amg.yaml", readFile(t, "deploy/amg.yaml"))
	amg := service(t, p, "amg")
	demo := service(t, p, "demo")
	env := service(t, p, "envoy")

	t.Run("images", func(t *testing.T) {
		for _, name := range slices.Sorted(maps.Keys(p.Services)) {
			s := p.Services[name]
			checkPinned(t, "service "+name, s.Image, s.Build != nil)
			checkLicensedImage(t, "service "+name, s.Image)
		}
		if demo.Image != amg.Image {
			t.Errorf("demo runs image %q, amg %q: the demo is amg's own image", demo.Image, amg.Image)
		}
		for _, name := range []string{"vault", "vault-seed", "redis", "jaeger"} {
			service(t, p, name)
		}
	})

	t.Run("envoy", func(t *testing.T) {
		const target = "/etc/envoy/envoy.yaml"
		checkBind(t, env, "envoy/envoy.yaml", target)
		if c, _ := flagValue(env.Command, "-c"); c != target {
			t.Errorf("envoy command %q does not load %s", env.Command, target)
		}
		b := parseBootstrap(t, "envoy/envoy.yaml", readFile(t, "envoy/envoy.yaml"))
		checkXDSCluster(t, b, amg.Name, cfg)
		want := uint32(listenPort(t, "envoy.listen", cfg.Envoy.Listen))
		published := false
		for _, port := range env.Ports {
			if port.Target == want && port.Published == strconv.Itoa(int(want)) {
				published = true
			}
		}
		if !published {
			t.Errorf("envoy does not publish its agent listener port %d (envoy.listen): %+v", want, env.Ports)
		}
	})

	t.Run("amg", func(t *testing.T) {
		conf, ok := flagValue(amg.Command, "--config")
		if len(amg.Command) == 0 || amg.Command[0] != "serve" || !ok {
			t.Fatalf("amg command %q, want serve --config FILE", amg.Command)
		}
		checkBind(t, amg, "deploy/amg.yaml", conf)
		checkBind(t, amg, "policies", cfg.PolicyDir)
		if v, ok := mount(amg, cfg.DataDir); !ok || v.Type != types.VolumeTypeVolume {
			t.Errorf("amg: data_dir %s is not on a named volume", cfg.DataDir)
		}
		checkEnvoyAddresses(t, cfg, amg.Name, []string{fmt.Sprintf("%s:%d", amg.Name, listenPort(t, "broker_listen", cfg.BrokerListen))})
		// amg ignores VAULT_ADDR; it must not name another Vault.
		if addr := amg.Environment["VAULT_ADDR"]; addr != nil && *addr != cfg.Vault.Address {
			t.Errorf("amg VAULT_ADDR %q, but deploy/amg.yaml's vault.address is %q", *addr, cfg.Vault.Address)
		}
		// Published ports other than Envoy's agent port stay on loopback.
		for _, name := range slices.Sorted(maps.Keys(p.Services)) {
			if name == env.Name {
				continue
			}
			for _, port := range p.Services[name].Ports {
				if port.Published != "" && port.HostIP != "127.0.0.1" {
					t.Errorf("service %s publishes port %d on %q, want 127.0.0.1", name, port.Target, port.HostIP)
				}
			}
		}
	})

	t.Run("redis", func(t *testing.T) {
		// Redis holds the key that signs decisions, and the broker
		// forwards whatever carries a decision signed with it. Here Redis
		// has no password, which holds only while the host publishes
		// neither Redis nor amg's broker, authz and xDS ports.
		host, _ := splitAddr(t, "redis.address", cfg.Redis.Address)
		if redis := service(t, p, host); cfg.Redis.Password.String() == "" && len(redis.Ports) > 0 {
			t.Errorf("service %s publishes %+v, but deploy/amg.yaml gives Redis no password", redis.Name, redis.Ports)
		}
		internal := map[uint32]string{}
		for what, addr := range map[string]string{"broker_listen": cfg.BrokerListen, "authz_listen": cfg.AuthzListen, "xds_listen": cfg.XDSListen} {
			internal[uint32(listenPort(t, what, addr))] = what
		}
		for _, port := range amg.Ports {
			if what, ok := internal[port.Target]; ok {
				t.Errorf("service amg publishes its %s port %d; only Envoy may reach it", what, port.Target)
			}
		}
	})

	t.Run("tracing", func(t *testing.T) {
		// Envoy and amg both send their spans to the jaeger service: Envoy
		// over OTLP/gRPC (the xDS output's collector cluster), amg over
		// OTLP/HTTP.
		jaeger := service(t, p, "jaeger")
		listens := func(port uint32) bool {
			return slices.ContainsFunc(jaeger.Ports, func(pc types.ServicePortConfig) bool { return pc.Target == port })
		}
		const otlpGRPC = 4317
		if h, port := splitAddr(t, "envoy.tracing_address", cfg.Envoy.TracingAddress); h != jaeger.Name || port != otlpGRPC || !listens(otlpGRPC) {
			t.Errorf("envoy.tracing_address = %q, want %s:%d, jaeger's OTLP/gRPC port", cfg.Envoy.TracingAddress, jaeger.Name, otlpGRPC)
		}
		ep := amg.Environment["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
		if ep == nil {
			t.Fatal("amg has no OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
		}
		u, err := url.Parse(*ep)
		if err != nil || u.Hostname() != jaeger.Name || u.Port() != "4318" || !listens(4318) {
			t.Errorf("amg sends its traces to %q, want jaeger's OTLP/HTTP port 4318", *ep)
		}
	})

	t.Run("demo upstream", func(t *testing.T) {
		if len(demo.Command) == 0 || demo.Command[0] != "demo" {
			t.Fatalf("demo command %q, want demo --listen ADDR", demo.Command)
		}
		listen, ok := flagValue(demo.Command, "--listen")
		if !ok {
			t.Fatalf("demo command %q has no --listen (the default is loopback)", demo.Command)
		}
		checkUpstream(t, cfg, "notion", demo.Name, listenPort(t, "demo --listen", listen))
	})

	t.Run("upstream secret", func(t *testing.T) {
		// amg reads each header's vault: reference from the compose vault
		// service, with its dev root token, after vault-seed wrote it.
		vault := service(t, p, "vault")
		seed := service(t, p, "vault-seed")
		rootToken := vault.Environment["VAULT_DEV_ROOT_TOKEN_ID"]
		if rootToken == nil || *rootToken == "" {
			t.Fatal("service vault: no VAULT_DEV_ROOT_TOKEN_ID")
		}
		listen := vault.Environment["VAULT_DEV_LISTEN_ADDRESS"]
		if listen == nil {
			t.Fatal("service vault: no VAULT_DEV_LISTEN_ADDRESS (the default is loopback only)")
		}
		_, vaultPort := splitAddr(t, "vault VAULT_DEV_LISTEN_ADDRESS", *listen)

		// Dev mode serves plain http.
		want := fmt.Sprintf("http://%s:%d", vault.Name, vaultPort)
		if strings.TrimSuffix(cfg.Vault.Address, "/") != want {
			t.Errorf("deploy/amg.yaml vault.address %q, want %s (the vault service and its port)", cfg.Vault.Address, want)
		}
		for _, ref := range vaultTokenRefs(t, cfg) {
			if v := amg.Environment[ref.Path]; v == nil || *v != *rootToken {
				t.Errorf("vault.token is %s, but amg's %s is not the vault service's VAULT_DEV_ROOT_TOKEN_ID", ref, ref.Path)
			}
		}
		// vault-seed writes to the same Vault.
		if v := seed.Environment["VAULT_ADDR"]; v == nil || strings.TrimSuffix(*v, "/") != want {
			t.Errorf("vault-seed VAULT_ADDR is not %s", want)
		}
		if v := seed.Environment["VAULT_TOKEN"]; v == nil || *v != *rootToken {
			t.Error("vault-seed VAULT_TOKEN is not the vault service's VAULT_DEV_ROOT_TOKEN_ID")
		}

		// What the script writes is TestComposeVaultSeed's.
	})

	t.Run("depends_on", func(t *testing.T) {
		want := map[string]map[string]string{
			"envoy":      {"amg": types.ServiceConditionHealthy},
			"amg":        {"redis": types.ServiceConditionHealthy, "vault-seed": types.ServiceConditionCompletedSuccessfully, "demo": types.ServiceConditionStarted},
			"vault-seed": {"vault": types.ServiceConditionHealthy},
		}
		for svc, deps := range want {
			s := service(t, p, svc)
			got := map[string]string{}
			for dep, d := range s.DependsOn {
				got[dep] = d.Condition
			}
			if !maps.Equal(got, deps) {
				t.Errorf("service %s depends_on %v, want %v", svc, got, deps)
			}
		}
		// amg, distroless, probes its own readiness on its admin port.
		if hc := service(t, p, "amg").HealthCheck; hc == nil || strings.Join(hc.Test, " ") != "CMD /amg health --url http://127.0.0.1:8081/readyz" {
			t.Errorf("amg healthcheck = %+v, want amg health probing /readyz on the admin port", hc)
		}
		// A service_healthy dependency needs a healthcheck to become healthy.
		for _, name := range slices.Sorted(maps.Keys(p.Services)) {
			for dep, d := range p.Services[name].DependsOn {
				if d.Condition != types.ServiceConditionHealthy {
					continue
				}
				if hc := p.Services[dep].HealthCheck; hc == nil || hc.Disable || len(hc.Test) == 0 {
					t.Errorf("service %s waits for %s to be healthy, which has no healthcheck", name, dep)
				}
			}
		}
	})
}

// object is one Kubernetes manifest document.
type object struct {
	file string
	m    map[string]any
}

func (o object) kind() string { return str(dig(o.m, "kind")) }
func (o object) name() string { return str(dig(o.m, "metadata", "name")) }
func (o object) String() string {
	return fmt.Sprintf("%s %s/%s", o.file, o.kind(), o.name())
}

// dig follows string keys and int indexes; nil where there is nothing.
func dig(v any, keys ...any) any {
	for _, k := range keys {
		switch k := k.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				return nil
			}
			v = m[k]
		case int:
			s, ok := v.([]any)
			if !ok || k >= len(s) {
				return nil
			}
			v = s[k]
		}
	}
	return v
}

func str(v any) string   { s, _ := v.(string); return s }
func list(v any) []any   { s, _ := v.([]any); return s }
func boolean(v any) bool { b, ok := v.(bool); return ok && b }

func strs(v any) []string {
	var out []string
	for _, x := range list(v) {
		out = append(out, str(x))
	}
	return out
}

func loadManifests(t *testing.T) []object {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(root, "deploy", "k8s", "*.yaml"))
	if err != nil || len(names) == 0 {
		t.Fatalf("no deploy/k8s/*.yaml (%v)", err)
	}
	var objs []object
	for _, n := range names {
		f, err := os.Open(n)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(f)
		for {
			var m map[string]any
			err := dec.Decode(&m)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", n, err)
			}
			if m == nil { // an empty document, e.g. after a trailing ---
				continue
			}
			objs = append(objs, object{file: "deploy/k8s/" + filepath.Base(n), m: m})
		}
		f.Close()
	}
	return objs
}

func find(t *testing.T, objs []object, kind, name string) object {
	t.Helper()
	for _, o := range objs {
		if o.kind() == kind && o.name() == name {
			return o
		}
	}
	t.Fatalf("deploy/k8s has no %s %s", kind, name)
	return object{}
}

// container returns the named container of a workload's pod template.
func container(t *testing.T, o object, name string) map[string]any {
	t.Helper()
	for _, c := range list(dig(o.m, "spec", "template", "spec", "containers")) {
		if str(dig(c, "name")) == name {
			return c.(map[string]any)
		}
	}
	t.Fatalf("%s has no container %s", o, name)
	return nil
}

// containerPort resolves a probe or Service port (a number or a port name)
// against a container's ports.
func containerPort(c map[string]any, port any) int {
	if n, ok := port.(int); ok {
		return n
	}
	for _, p := range list(dig(c, "ports")) {
		if str(dig(p, "name")) == str(port) {
			n, _ := dig(p, "containerPort").(int)
			return n
		}
	}
	return 0
}

// volumeMount returns the volume name and subPath mounted at mountPath.
func volumeMount(c map[string]any, mountPath string) (name, subPath string) {
	for _, vm := range list(dig(c, "volumeMounts")) {
		if str(dig(vm, "mountPath")) == mountPath {
			return str(dig(vm, "name")), str(dig(vm, "subPath"))
		}
	}
	return "", ""
}

// podVolume returns the pod template's volume called name.
func podVolume(o object, name string) any {
	for _, v := range list(dig(o.m, "spec", "template", "spec", "volumes")) {
		if str(dig(v, "name")) == name {
			return v
		}
	}
	return nil
}

// servicePort returns the port a Service exposes for the container port
// target (by number or by name), or 0.
func servicePort(svc object, c map[string]any, target int) int {
	for _, p := range list(dig(svc.m, "spec", "ports")) {
		tp := dig(p, "targetPort")
		if tp == nil {
			tp = dig(p, "port")
		}
		if containerPort(c, tp) == target {
			n, _ := dig(p, "port").(int)
			return n
		}
	}
	return 0
}

// serviceTarget returns the container port of c that Service svc
// exposes as port, or 0.
func serviceTarget(svc object, c map[string]any, port int) int {
	for _, p := range list(dig(svc.m, "spec", "ports")) {
		if dig(p, "port") != port {
			continue
		}
		tp := dig(p, "targetPort")
		if tp == nil {
			tp = port
		}
		return containerPort(c, tp)
	}
	return 0
}

func configMapData(t *testing.T, o object) map[string]string {
	t.Helper()
	data := map[string]string{}
	m, _ := dig(o.m, "data").(map[string]any)
	for k, v := range m {
		s, ok := v.(string)
		if !ok {
			t.Fatalf("%s: data.%s is not a string", o, k)
		}
		data[k] = s
	}
	return data
}

// secretEnv returns the Secret and key container c sets variable name
// from. It reports, as where, a variable not set from a Secret, one from
// an optional Secret (the pod would start without it), and a Secret
// deploy/README.md does not say how to create.
func secretEnv(t *testing.T, where string, c map[string]any, name, readme string) (secret, key string) {
	t.Helper()
	for _, e := range list(dig(c, "env")) {
		if str(dig(e, "name")) != name {
			continue
		}
		ref := dig(e, "valueFrom", "secretKeyRef")
		secret, key = str(dig(ref, "name")), str(dig(ref, "key"))
		if secret == "" || key == "" {
			break
		}
		if boolean(dig(ref, "optional")) {
			t.Errorf("%s: %s comes from an optional Secret; amg cannot start without it", where, name)
		}
		if !strings.Contains(readme, "create secret generic "+secret) {
			t.Errorf("deploy/README.md does not say how to create the Secret %s", secret)
		}
		return secret, key
	}
	t.Errorf("%s does not set %s from a Secret", where, name)
	return "", ""
}

// envRef returns the reference of a template that is exactly one
// ${env:NAME}, the form these manifests give every credential amg reads.
func envRef(t *testing.T, what string, tmpl config.Template) (secrets.Ref, bool) {
	t.Helper()
	refs := tmpl.Refs()
	if len(refs) != 1 || refs[0].Scheme != secrets.SchemeEnv || tmpl.String() != "${"+refs[0].String()+"}" {
		t.Errorf("%s is %q, want a single ${env:NAME} reference, set from a Secret", what, tmpl.String())
		return secrets.Ref{}, false
	}
	return refs[0], true
}

// workloads returns the objects that run pods: those with a pod template.
func workloads(objs []object) []object {
	var out []object
	for _, o := range objs {
		if dig(o.m, "spec", "template", "spec") != nil {
			out = append(out, o)
		}
	}
	return out
}

// workloadName names a workload as the NetworkPolicy checks report it.
func workloadName(o object) string { return o.kind() + "/" + o.name() }

// podLabels returns the labels of the pods a workload runs.
func podLabels(o object) map[string]string {
	labels := map[string]string{}
	m, _ := dig(o.m, "spec", "template", "metadata", "labels").(map[string]any)
	for k, v := range m {
		labels[k] = str(v)
	}
	return labels
}

// selects reports whether the label selector sel (matchLabels and
// matchExpressions) selects labels. An empty selector selects every pod.
func selects(t *testing.T, where string, sel any, labels map[string]string) bool {
	t.Helper()
	if sel != nil {
		if _, ok := sel.(map[string]any); !ok {
			t.Errorf("%s: selector %v is not a mapping", where, sel)
			return false
		}
	}
	match, _ := dig(sel, "matchLabels").(map[string]any)
	for k, v := range match {
		if have, ok := labels[k]; !ok || have != str(v) {
			return false
		}
	}
	for _, e := range list(dig(sel, "matchExpressions")) {
		have, ok := labels[str(dig(e, "key"))]
		in := ok && slices.Contains(strs(dig(e, "values")), have)
		switch op := str(dig(e, "operator")); op {
		case "In":
			if !in {
				return false
			}
		case "NotIn":
			if in {
				return false
			}
		case "Exists":
			if !ok {
				return false
			}
		case "DoesNotExist":
			if ok {
				return false
			}
		default:
			t.Errorf("%s: matchExpressions operator %q", where, op)
			return false
		}
	}
	return true
}

// serviceWorkload returns the one workload whose pods Service svc selects.
func serviceWorkload(t *testing.T, objs []object, svc object) object {
	t.Helper()
	sel, _ := dig(svc.m, "spec", "selector").(map[string]any)
	var found []object
	for _, w := range workloads(objs) {
		if len(sel) > 0 && selects(t, svc.String(), map[string]any{"matchLabels": sel}, podLabels(w)) {
			found = append(found, w)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%s selects the pods of %d workloads, want 1", svc, len(found))
	}
	return found[0]
}

// isolated reports whether a NetworkPolicy isolates the pods with labels
// for ingress: only then is any connection to them refused.
func isolated(t *testing.T, objs []object, labels map[string]string) bool {
	t.Helper()
	return len(ingressPolicies(t, objs, labels)) > 0
}

// ingressPolicies returns the NetworkPolicies that police ingress to the
// pods with labels.
func ingressPolicies(t *testing.T, objs []object, labels map[string]string) []object {
	t.Helper()
	var out []object
	for _, np := range objs {
		if np.kind() != "NetworkPolicy" || !selects(t, np.String(), dig(np.m, "spec", "podSelector"), labels) {
			continue
		}
		// Without policyTypes, a policy always polices ingress.
		if types := strs(dig(np.m, "spec", "policyTypes")); len(types) == 0 || slices.Contains(types, "Ingress") {
			out = append(out, np)
		}
	}
	return out
}

// rulePort reports whether an ingress rule's ports include TCP port of
// container c (a policy names a port by number or by the container's name
// for it).
func rulePort(rule any, c map[string]any, port int) bool {
	ports := list(dig(rule, "ports"))
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		if proto := str(dig(p, "protocol")); proto != "" && proto != "TCP" {
			continue
		}
		n := containerPort(c, dig(p, "port"))
		end, _ := dig(p, "endPort").(int)
		if dig(p, "port") == nil || n == port || (end > 0 && n <= port && port <= end) {
			return true
		}
	}
	return false
}

// ingressPeers returns the peers ("from" entries) of every ingress rule
// that admits TCP port of container c to the pods with labels; a nil
// peer is a rule with no "from", which admits every source.
func ingressPeers(t *testing.T, objs []object, labels map[string]string, c map[string]any, port int) []any {
	t.Helper()
	var peers []any
	for _, np := range ingressPolicies(t, objs, labels) {
		for _, rule := range list(dig(np.m, "spec", "ingress")) {
			if !rulePort(rule, c, port) {
				continue
			}
			from := list(dig(rule, "from"))
			if len(from) == 0 {
				peers = append(peers, nil)
			}
			peers = append(peers, from...)
		}
	}
	return peers
}

// checkIngress checks that the NetworkPolicies let exactly the pods of
// the workloads want (names as workloadName gives them; none: no pod at
// all) connect to TCP port of workload w's container c, and nothing from
// outside this namespace. A peer with a namespace selector or an IP block
// counts as outside, even if it names this namespace.
func checkIngress(t *testing.T, objs []object, w object, c map[string]any, what string, port int, want []string) {
	t.Helper()
	where := fmt.Sprintf("%s %s port %d", w, what, port)
	wanted := "no pod"
	if len(want) > 0 {
		wanted = "the pods of " + strings.Join(want, ", ")
	}
	if !isolated(t, objs, podLabels(w)) {
		t.Errorf("%s: no NetworkPolicy isolates these pods for ingress, so every pod in every namespace may connect; want %s", where, wanted)
		return
	}
	var got []string
	for _, peer := range ingressPeers(t, objs, podLabels(w), c, port) {
		sel := dig(peer, "podSelector")
		if peer == nil || sel == nil || dig(peer, "namespaceSelector") != nil || dig(peer, "ipBlock") != nil {
			src := "every source"
			if peer != nil {
				src = fmt.Sprint(peer)
			}
			t.Errorf("%s: a NetworkPolicy admits %s; want %s, in this namespace", where, src, wanted)
			continue
		}
		for _, other := range workloads(objs) {
			if selects(t, where, sel, podLabels(other)) {
				got = append(got, workloadName(other))
			}
		}
	}
	slices.Sort(got)
	if got = slices.Compact(got); !slices.Equal(got, want) {
		t.Errorf("%s: the NetworkPolicies admit the pods of %v; want %s", where, got, wanted)
	}
}

// directive returns the values after "--name first" in a redis-server
// command line, up to the next --option; nil if there is no such
// directive.
func directive(args []string, name, first string) []string {
	for i := 0; i+1 < len(args); i++ {
		if args[i] != "--"+name || args[i+1] != first {
			continue
		}
		end := i + 2
		for end < len(args) && !strings.HasPrefix(args[end], "--") {
			end++
		}
		return args[i+2 : end]
	}
	return nil
}

func TestKubernetes(t *testing.T) {
	objs := loadManifests(t)

	t.Run("documents", func(t *testing.T) {
		seen := map[string]string{}
		for _, o := range objs {
			if str(dig(o.m, "apiVersion")) == "" || o.kind() == "" || o.name() == "" {
				t.Errorf("%s: want apiVersion, kind and metadata.name", o)
			}
			if ns := str(dig(o.m, "metadata", "namespace")); o.kind() != "Namespace" && ns != "amg" {
				t.Errorf("%s: namespace %q, want amg", o, ns)
			}
			key := o.kind() + "/" + o.name()
			if prev, dup := seen[key]; dup {
				t.Errorf("%s: also defined in %s", o, prev)
			}
			seen[key] = o.file
		}
		find(t, objs, "Namespace", "amg")
	})

	t.Run("pods", func(t *testing.T) {
		compose := loadCompose(t)
		composeImages := map[string]string{}
		built := map[string]bool{}
		for _, s := range compose.Services {
			repo, _ := splitImage(s.Image)
			composeImages[repo] = s.Image
			built[s.Image] = built[s.Image] || s.Build != nil
		}
		for _, o := range objs {
			pod := dig(o.m, "spec", "template", "spec")
			if pod == nil {
				continue
			}
			podNonRoot := boolean(dig(pod, "securityContext", "runAsNonRoot"))
			for _, c := range list(dig(pod, "containers")) {
				where := fmt.Sprintf("%s container %s", o, str(dig(c, "name")))
				image := str(dig(c, "image"))
				checkPinned(t, where, image, built[image])
				checkLicensedImage(t, where, image)
				// Kubernetes and compose run the same versions.
				repo, _ := splitImage(image)
				if ci, ok := composeImages[repo]; ok && ci != image {
					t.Errorf("%s: image %s, but docker-compose.yml runs %s", where, image, ci)
				}
				if !podNonRoot && !boolean(dig(c, "securityContext", "runAsNonRoot")) {
					t.Errorf("%s: not runAsNonRoot", where)
				}
				// Always makes every file on a volume group-readable at each
				// mount, and amg then refuses its admin.token.
				if dig(pod, "securityContext", "fsGroup") != nil && str(dig(pod, "securityContext", "fsGroupChangePolicy")) != "OnRootMismatch" {
					t.Errorf("%s: fsGroup without fsGroupChangePolicy: OnRootMismatch", where)
				}
				if uid, ok := dig(pod, "securityContext", "runAsUser").(int); !ok || uid == 0 {
					t.Errorf("%s: want a non-zero pod runAsUser, have %v", where, dig(pod, "securityContext", "runAsUser"))
				}
				if dig(c, "securityContext", "allowPrivilegeEscalation") != false {
					t.Errorf("%s: allowPrivilegeEscalation is not false", where)
				}
				if !slices.Contains(strs(dig(c, "securityContext", "capabilities", "drop")), "ALL") {
					t.Errorf("%s: capabilities are not dropped", where)
				}
			}
		}
	})

	sts := find(t, objs, "StatefulSet", "amg")
	amgC := container(t, sts, "amg")
	cfgMap := configMapData(t, find(t, objs, "ConfigMap", "amg-config"))
	cfg := parseConfig(t, "deploy/k8s amg-config amg.yaml", []byte(cfgMap["amg.yaml"]))
	headless := find(t, objs, "Service", str(dig(sts.m, "spec", "serviceName")))

	t.Run("amg", func(t *testing.T) {
		replicas, _ := dig(sts.m, "spec", "replicas").(int)
		if replicas < 2 {
			t.Errorf("amg replicas %d, want at least 2", replicas)
		}
		if dig(headless.m, "spec", "clusterIP") != "None" {
			t.Errorf("%s: the StatefulSet's serviceName must be a headless Service (clusterIP: None) for per-pod names", headless)
		}
		adminPort := listenPort(t, "admin_listen", cfg.AdminListen)
		for probe, want := range map[string]string{"readinessProbe": "/readyz", "livenessProbe": "/healthz"} {
			get := dig(amgC, probe, "httpGet")
			if str(dig(get, "path")) != want || containerPort(amgC, dig(get, "port")) != adminPort {
				t.Errorf("amg %s = %v, want GET %s on the admin port %d", probe, get, want, adminPort)
			}
		}

		// The pods' names on the broker port, in the order the StatefulSet
		// numbers them.
		brokerPort := listenPort(t, "broker_listen", cfg.BrokerListen)
		var brokers []string
		for i := range replicas {
			brokers = append(brokers, fmt.Sprintf("%s-%d.%s:%d", sts.name(), i, headless.name(), brokerPort))
		}
		checkEnvoyAddresses(t, cfg, headless.name(), brokers)
		for what, addr := range map[string]string{"admin_listen": cfg.AdminListen, "authz_listen": cfg.AuthzListen,
			"broker_listen": cfg.BrokerListen, "xds_listen": cfg.XDSListen} {
			p := listenPort(t, what, addr)
			if !slices.ContainsFunc(list(dig(amgC, "ports")), func(x any) bool { return dig(x, "containerPort") == p }) {
				t.Errorf("amg container does not declare port %d (%s)", p, what)
			}
			if sp := servicePort(headless, amgC, p); sp != p {
				t.Errorf("Service %s exposes %s (container port %d) as %d, want the same number: the config names it so", headless.name(), what, p, sp)
			}
		}

		args := strs(dig(amgC, "args"))
		conf, ok := flagValue(args, "--config")
		if len(args) == 0 || args[0] != "serve" || !ok {
			t.Fatalf("amg args %q, want serve --config FILE", args)
		}
		// amg rereads the file for changes to its envoy: section, which
		// reach it only through a directory mount: the kubelet never
		// updates a file mounted with subPath.
		if vol, sub := volumeMount(amgC, path.Dir(conf)); path.Base(conf) != "amg.yaml" || sub != "" || str(dig(podVolume(sts, vol), "configMap", "name")) != "amg-config" {
			t.Errorf("amg: %s is not amg-config's amg.yaml, mounted as a directory (subPath mounts never update)", conf)
		}
		for _, vm := range list(dig(amgC, "volumeMounts")) {
			if str(dig(podVolume(sts, str(dig(vm, "name"))), "configMap", "name")) == "amg-config" && str(dig(vm, "subPath")) != "" {
				t.Errorf("amg: amg-config is mounted at %s with subPath %s, which never updates", str(dig(vm, "mountPath")), str(dig(vm, "subPath")))
			}
		}
		if vol, sub := volumeMount(amgC, cfg.PolicyDir); sub != "" || str(dig(podVolume(sts, vol), "configMap", "name")) != "amg-policies" {
			t.Errorf("amg: policy_dir %s is not the amg-policies ConfigMap, mounted as a directory (subPath mounts never update)", cfg.PolicyDir)
		}
		vol, _ := volumeMount(amgC, cfg.DataDir)
		claimed := false
		for _, vct := range list(dig(sts.m, "spec", "volumeClaimTemplates")) {
			claimed = claimed || (vol != "" && str(dig(vct, "metadata", "name")) == vol)
		}
		if !claimed {
			t.Errorf("amg: data_dir %s is not on a volumeClaimTemplate", cfg.DataDir)
		}

		// The upstream tokens and shared keys are read from Vault (not
		// deployed here); TestKubernetesVaultSetup runs the README's steps
		// that put them there.
		readme := string(readFile(t, "deploy/README.md"))
		if len(headerRefs(cfg)) == 0 {
			t.Error("no upstream header takes a secret reference")
		}
		if u, err := url.Parse(cfg.Vault.Address); err == nil && u.Scheme != "https" {
			t.Errorf("amg-config vault.address %q: want https to a Vault outside the pod", cfg.Vault.Address)
		}

		// Vault's own token (${env:NAME}) is set in the container from a
		// required Secret the README says how to create.
		for _, ref := range vaultTokenRefs(t, cfg) {
			secretEnv(t, "vault.token is "+ref.String()+": the amg container", amgC, ref.Path, readme)
		}
	})

	// Who may connect to what. Redis holds the key that signs decisions
	// and the broker forwards, with credentials from Vault, whatever
	// carries a decision signed with it: neither may be open to the
	// cluster.
	t.Run("network policies", func(t *testing.T) {
		// Every pod here is isolated, so that a port added later stays
		// closed until a policy opens it.
		for _, w := range workloads(objs) {
			if !isolated(t, objs, podLabels(w)) {
				t.Errorf("%s: no NetworkPolicy isolates its pods for ingress", w)
			}
		}

		// amg: every port of its Service but the agent-facing one only
		// from the pods it serves. The admin port from no pod at all:
		// the kubelet's probes come from the node, which NetworkPolicy
		// always admits, and kubectl port-forward connects inside the pod.
		envoyDep := find(t, objs, "Deployment", "envoy")
		envoyC := container(t, envoyDep, "envoy")
		fromEnvoy := []string{workloadName(envoyDep)}
		want := map[int][]string{listenPort(t, "admin_listen", cfg.AdminListen): nil}
		_, authzPort := splitAddr(t, "envoy.authz_address", cfg.Envoy.AuthzAddress)
		want[authzPort] = fromEnvoy
		for _, b := range cfg.Envoy.BrokerAddresses {
			_, p := splitAddr(t, "envoy.broker_addresses", b)
			want[p] = fromEnvoy
		}
		want[listenPort(t, "xds_listen", cfg.XDSListen)] = fromEnvoy
		agentPort := listenPort(t, "listen", cfg.Listen)
		for _, sp := range list(dig(headless.m, "spec", "ports")) {
			tp := dig(sp, "targetPort")
			if tp == nil {
				tp = dig(sp, "port")
			}
			p := containerPort(amgC, tp)
			if p == agentPort {
				continue
			}
			w, ok := want[p]
			if !ok {
				t.Errorf("Service %s port %s (%d): this test does not say who may connect to it; add it", headless.name(), str(dig(sp, "name")), p)
				continue
			}
			checkIngress(t, objs, sts, amgC, str(dig(sp, "name")), p, w)
		}

		// Envoy's agent listener: from every source, or agents cannot
		// reach it.
		listen := listenPort(t, "envoy.listen", cfg.Envoy.Listen)
		if isolated(t, objs, podLabels(envoyDep)) && !slices.ContainsFunc(ingressPeers(t, objs, podLabels(envoyDep), envoyC, listen), func(p any) bool { return p == nil }) {
			t.Errorf("%s: the NetworkPolicies do not admit every source to the agent listener (%d)", envoyDep, listen)
		}

		// The demo upstream has no authentication: only amg.
		demoSvc := find(t, objs, "Service", "demo")
		demo := serviceWorkload(t, objs, demoSvc)
		demoC := container(t, demo, "demo")
		for _, sp := range list(dig(demoSvc.m, "spec", "ports")) {
			p, _ := dig(sp, "port").(int)
			checkIngress(t, objs, demo, demoC, str(dig(sp, "name")), serviceTarget(demoSvc, demoC, p), []string{workloadName(sts)})
		}
	})

	t.Run("redis", func(t *testing.T) {
		host, port := splitAddr(t, "amg-config redis.address", cfg.Redis.Address)
		svc := find(t, objs, "Service", host)
		dep := serviceWorkload(t, objs, svc)
		c := container(t, dep, "redis")
		target := serviceTarget(svc, c, port)
		if target == 0 {
			t.Fatalf("Service %s has no port %d (amg-config redis.address)", svc.name(), port)
		}
		// Only amg.
		checkIngress(t, objs, dep, c, "redis", target, []string{workloadName(sts)})

		// A password from a Secret: amg reads it from its environment,
		// and Redis is given the same Secret key.
		ref, ok := envRef(t, "amg-config redis.password", cfg.Redis.Password)
		if !ok {
			return
		}
		readme := string(readFile(t, "deploy/README.md"))
		secret, key := secretEnv(t, "redis.password is "+ref.String()+": the amg container", amgC, ref.Path, readme)
		if secret == "" {
			return
		}
		var v string
		for _, e := range list(dig(c, "env")) {
			k := dig(e, "valueFrom", "secretKeyRef")
			if str(dig(k, "name")) == secret && str(dig(k, "key")) == key && !boolean(dig(k, "optional")) {
				v = str(dig(e, "name"))
			}
		}
		if v == "" {
			t.Fatalf("%s: the redis container does not get amg's Redis password (Secret %s, key %s) from a required Secret", dep, secret, key)
		}
		// Kubernetes expands $(NAME) in args to the variable's value.
		args := strs(dig(c, "args"))
		if user := cfg.Redis.Username; user == "" {
			if i := slices.Index(args, "--requirepass"); i < 0 || i+1 >= len(args) || args[i+1] != "$("+v+")" {
				t.Errorf("%s: redis args %q do not require the password $(%s)", dep, args, v)
			}
		} else {
			if d := directive(args, "user", "default"); !slices.Contains(d, "off") || slices.Contains(d, "on") {
				t.Errorf("%s: redis args %q: the default user is not off (--user default off): it would take connections without a password", dep, args)
			}
			if d := directive(args, "user", user); !slices.Contains(d, "on") || !slices.Contains(d, ">$("+v+")") || slices.Contains(d, "nopass") {
				t.Errorf("%s: redis args %q: the ACL user %s (amg-config redis.username) is not on with the password $(%s)", dep, args, user, v)
			}
		}
	})

	t.Run("policies", func(t *testing.T) {
		data := configMapData(t, find(t, objs, "ConfigMap", "amg-policies"))
		want := repoPolicies(t)
		if !slices.Equal(slices.Sorted(maps.Keys(data)), slices.Sorted(maps.Keys(want))) {
			t.Errorf("amg-policies holds %v, policies/ %v", slices.Sorted(maps.Keys(data)), slices.Sorted(maps.Keys(want)))
		}
		files := map[string][]byte{}
		for name, content := range data {
			files[name] = []byte(content)
			if w, ok := want[name]; ok && content != string(w) {
				t.Errorf("amg-policies %s differs from policies/%s", name, name)
			}
		}
		checkPolicies(t, policyFiles("amg-policies", files), cfg)
	})

	t.Run("envoy", func(t *testing.T) {
		cm := find(t, objs, "ConfigMap", "envoy-bootstrap")
		b := parseBootstrap(t, "deploy/k8s envoy-bootstrap envoy.yaml", []byte(configMapData(t, cm)["envoy.yaml"]))
		file := parseBootstrap(t, "envoy/envoy.yaml", readFile(t, "envoy/envoy.yaml"))
		if !proto.Equal(b, file) {
			t.Error("the envoy-bootstrap ConfigMap is not the same bootstrap as envoy/envoy.yaml")
		}
		checkXDSCluster(t, b, headless.name(), cfg)

		dep := find(t, objs, "Deployment", "envoy")
		c := container(t, dep, "envoy")
		conf, _ := flagValue(strs(dig(c, "args")), "-c")
		vol, sub := volumeMount(c, path.Dir(conf))
		if sub != "" || str(dig(podVolume(dep, vol), "configMap", "name")) != cm.name() || path.Base(conf) != "envoy.yaml" {
			t.Errorf("envoy: -c %q is not the %s ConfigMap's envoy.yaml", conf, cm.name())
		}
		listen := listenPort(t, "envoy.listen", cfg.Envoy.Listen)
		if sp := servicePort(find(t, objs, "Service", "envoy"), c, listen); sp != listen {
			t.Errorf("Service envoy exposes the agent listener (%d) as %d", listen, sp)
		}
		// The overload manager acts on the heap's share of a size the
		// bootstrap states; it must leave the pod room for what is not
		// heap, or the kernel kills Envoy before Envoy sheds any load.
		limit, ok := memoryBytes(str(dig(c, "resources", "limits", "memory")))
		heap := heapLimit(t, b)
		if !ok || heap > limit*7/8 {
			t.Errorf("envoy: the overload manager's heap is %d bytes, the pod's memory limit %q: want a limit, with an eighth of it or more left beside the heap",
				heap, str(dig(c, "resources", "limits", "memory")))
		}
	})

	t.Run("demo upstream", func(t *testing.T) {
		dep := find(t, objs, "Deployment", "demo")
		c := container(t, dep, "demo")
		args := strs(dig(c, "args"))
		listen, ok := flagValue(args, "--listen")
		if len(args) == 0 || args[0] != "demo" || !ok {
			t.Fatalf("demo args %q, want demo --listen ADDR", args)
		}
		if str(dig(c, "image")) != str(dig(amgC, "image")) {
			t.Errorf("demo image %v, amg %v: the demo is amg's own image", dig(c, "image"), dig(amgC, "image"))
		}
		svc := find(t, objs, "Service", "demo")
		checkUpstream(t, cfg, "notion", svc.name(), servicePort(svc, c, listenPort(t, "demo --listen", listen)))
	})
}
