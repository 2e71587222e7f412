// Command checkload measures the authz service as Envoy uses it: Check
// RPCs over gRPC on loopback, each carrying a 2 KB tools/call decided
// against a 12-constraint grant, with the real standalone collaborators
// (cached token lookups, the in-memory limiter, redaction and the
// hash-chained audit file). It reports latency percentiles and Checks/s
// per concurrency level. Client and server share the machine, as Envoy
// and AMG do on one host, and by default one process; with -separate the
// server runs in a process of its own. By default the client works as
// Envoy's event loop does (see eventLoop); -client grpc uses grpc-go's
// instead.
//
//	go run ./bench/checkload -c 1,32 -d 10s
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/amgateway/amg/authz"
	"github.com/amgateway/amg/authz/authztest"
	"github.com/amgateway/amg/bench/internal/benchrun"
	"github.com/amgateway/amg/internal/audit"
	"github.com/amgateway/amg/internal/policy"
	"github.com/amgateway/amg/internal/ratelimit"
	"github.com/amgateway/amg/internal/telemetry"
	"github.com/amgateway/amg/internal/tokens"
)

func main() {
	common := benchrun.Flags()
	duration := flag.Duration("d", 10*time.Second, "how long each level runs")
	warmup := flag.Duration("warmup", 2*time.Second, "unmeasured run before each level")
	conns := flag.Int("conns", 4, "gRPC connections the clients share, as Envoy keeps a few")
	floor := flag.Bool("floor", false, "serve a Check that allows at once, to measure gRPC and loopback alone")
	redisAddr := flag.String("redis", "", "count every Check against a rate limit in the Redis at this address (host:port)")
	client := flag.String("client", "eventloop", "eventloop: one goroutine per connection writes and reads its Checks, as Envoy's event loop does; grpc: grpc-go's client")
	separate := flag.Bool("separate", false, "run the server in a process of its own, as AMG runs beside Envoy")
	serverProcs := flag.Int("server-procs", 0, "with -separate, the server process's GOMAXPROCS (default: the runtime's)")
	serveTo := flag.String("serve-to", "", "(for -separate) only serve, write the address and token to this file, and stop when stdin closes")
	flag.Parse()
	if *client != "eventloop" && *client != "grpc" {
		log.Fatalf("-client must be eventloop or grpc, not %q", *client)
	}
	if *serveTo != "" {
		if err := serveOnly(*serveTo, *floor, *redisAddr); err != nil {
			log.Fatal(err)
		}
		return
	}
	cs, stopProfile := common.Start()
	defer stopProfile()
	if *serverProcs != 0 && !*separate {
		log.Fatal("-server-procs needs -separate")
	}
	if err := run(cs, *duration, *warmup, *conns, *floor, *redisAddr, *client, *separate, *serverProcs); err != nil {
		stopProfile()
		log.Fatal(err)
	}
}

func run(levels []int, duration, warmup time.Duration, nconns int, floor bool, redisAddr, client string, separate bool, serverProcs int) error {
	start, where := startServer, "in the clients' process"
	if separate {
		start = func(floor bool, redisAddr string) (string, string, func(), error) {
			return startChild(floor, redisAddr, serverProcs)
		}
		where = "in a process of its own"
		if serverProcs > 0 {
			where += fmt.Sprintf(" (GOMAXPROCS=%d)", serverProcs)
		}
	}
	addr, secret, stopServer, err := start(floor, redisAddr)
	if err != nil {
		return err
	}
	defer stopServer()

	req := authztest.EnvoyRequest("POST", map[string]string{
		"authorization": "Bearer " + secret, "mcp-protocol-version": "2025-06-18",
	}, authztest.BenchBody())
	load, closeClients, err := dialClients(client, addr, nconns, req)
	if err != nil {
		return err
	}
	defer closeClients()

	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	server := "AMG"
	if floor {
		server = "floor (allows at once)"
	}
	fmt.Printf("server: %s, %s; client: %s, %d connections\n", server, where, client, nconns)
	fmt.Fprintln(w, "concurrency\tchecks\tchecks/s\tp50\tp90\tp99\tmax\t")
	for _, c := range levels {
		if _, err := load(c, warmup); err != nil {
			return err
		}
		lat, err := load(c, duration)
		if err != nil {
			return err
		}
		slices.Sort(lat)
		pct := func(p float64) time.Duration { return lat[int(p*float64(len(lat)-1))] }
		fmt.Fprintf(w, "%d\t%d\t%.0f\t%v\t%v\t%v\t%v\t\n", c, len(lat), float64(len(lat))/duration.Seconds(),
			round(pct(0.50)), round(pct(0.90)), round(pct(0.99)), round(lat[len(lat)-1]))
	}
	return w.Flush()
}

// startServer serves Check in this process on a free loopback port, and
// returns its address, the token the clients present, and how to stop it:
// AMG as the gateway serves it, with its telemetry, or the floor with
// gRPC alone.
func startServer(floor bool, redisAddr string) (addr, token string, stop func(), err error) {
	dir, err := os.MkdirTemp("", "checkload")
	if err != nil {
		return "", "", nil, err
	}
	srv, tel, secret, closeServer, err := newServer(dir, redisAddr)
	if err != nil {
		os.RemoveAll(dir)
		return "", "", nil, err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		closeServer()
		os.RemoveAll(dir)
		return "", "", nil, err
	}
	var gs *grpc.Server
	if floor {
		gs = grpc.NewServer(authz.GRPCServerOptions(0)...)
		authv3.RegisterAuthorizationServer(gs, allowAll{})
	} else {
		gs = grpc.NewServer(append(authz.GRPCServerOptions(0), tel.GRPCServerOptions()...)...)
		authv3.RegisterAuthorizationServer(gs, srv)
	}
	go gs.Serve(lis)
	return lis.Addr().String(), secret, func() {
		gs.Stop()
		closeServer()
		os.RemoveAll(dir)
	}, nil
}

// serveOnly is the server process of -separate: it serves until its
// standard input closes, which happens when the measuring process ends,
// however it ends.
func serveOnly(file string, floor bool, redisAddr string) error {
	addr, token, stop, err := startServer(floor, redisAddr)
	if err != nil {
		return err
	}
	defer stop()
	if err := os.WriteFile(file+".tmp", []byte(addr+" "+token), 0o600); err != nil {
		return err
	}
	if err := os.Rename(file+".tmp", file); err != nil {
		return err
	}
	io.Copy(io.Discard, os.Stdin)
	return nil
}

// startChild runs the server in a child process (this program with
// -serve-to), with GOMAXPROCS procs if not 0, and waits until it serves.
func startChild(floor bool, redisAddr string, procs int) (addr, token string, stop func(), err error) {
	self, err := os.Executable()
	if err != nil {
		return "", "", nil, err
	}
	dir, err := os.MkdirTemp("", "checkload-child")
	if err != nil {
		return "", "", nil, err
	}
	file := filepath.Join(dir, "server")
	args := []string{"-serve-to", file}
	if redisAddr != "" {
		args = append(args, "-redis", redisAddr)
	}
	if floor {
		args = append(args, "-floor")
	}
	cmd := exec.Command(self, args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if procs > 0 {
		cmd.Env = append(os.Environ(), fmt.Sprintf("GOMAXPROCS=%d", procs))
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		os.RemoveAll(dir)
		return "", "", nil, err
	}
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return "", "", nil, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop = func() {
		stdin.Close()
		<-exited
		os.RemoveAll(dir)
	}
	deadline := time.After(30 * time.Second)
	for {
		select {
		case err := <-exited:
			os.RemoveAll(dir)
			return "", "", nil, fmt.Errorf("the server process ended before serving: %v", err)
		case <-deadline:
			stop()
			return "", "", nil, errors.New("the server process did not serve within 30s")
		case <-time.After(20 * time.Millisecond):
		}
		if b, err := os.ReadFile(file); err == nil {
			addr, token, _ := strings.Cut(string(b), " ")
			return addr, token, stop, nil
		}
	}
}

func round(d time.Duration) time.Duration { return d.Round(time.Microsecond) }

// A loadFunc runs c closed-loop clients for d, each sending Checks one
// after another, and returns every latency. Any denial or error stops the
// run: the harness measures allowed decisions only.
type loadFunc func(c int, d time.Duration) ([]time.Duration, error)

// dialClients opens nconns connections of the named client kind and
// returns the load they run.
func dialClients(kind, addr string, nconns int, req *authv3.CheckRequest) (loadFunc, func(), error) {
	var closers []func() error
	closeAll := func() {
		for _, c := range closers {
			c()
		}
	}
	if kind == "grpc" {
		clients := make([]authv3.AuthorizationClient, nconns)
		for i := range clients {
			conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				closeAll()
				return nil, nil, err
			}
			closers = append(closers, conn.Close)
			clients[i] = authv3.NewAuthorizationClient(conn)
		}
		return func(c int, d time.Duration) ([]time.Duration, error) {
			return loadGRPC(clients, req, c, d)
		}, closeAll, nil
	}
	loops := make([]*eventLoop, nconns)
	for i := range loops {
		l, err := dialEventLoop(addr, req)
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		closers = append(closers, l.Close)
		loops[i] = l
	}
	return func(c int, d time.Duration) ([]time.Duration, error) {
		return loadEventLoops(loops, c, d)
	}, closeAll, nil
}

// loadEventLoops shares c clients among the connections' event loops.
func loadEventLoops(loops []*eventLoop, c int, d time.Duration) ([]time.Duration, error) {
	deadline := time.Now().Add(d)
	lats := make([][]time.Duration, len(loops))
	errs := make([]error, len(loops))
	var wg sync.WaitGroup
	for i, l := range loops {
		n := c / len(loops)
		if i < c%len(loops) {
			n++
		}
		if n == 0 {
			continue
		}
		wg.Go(func() { lats[i], errs[i] = l.run(n, deadline) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return slices.Concat(lats...), nil
}

// loadGRPC runs c goroutines calling through grpc-go's client.
func loadGRPC(clients []authv3.AuthorizationClient, req *authv3.CheckRequest, c int, d time.Duration) ([]time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var mu sync.Mutex
	var all []time.Duration
	var firstErr error
	var wg sync.WaitGroup
	for i := range c {
		client := clients[i%len(clients)]
		wg.Go(func() {
			lat := make([]time.Duration, 0, 1<<16)
			for ctx.Err() == nil {
				start := time.Now()
				cctx, cancelCall := context.WithTimeout(context.Background(), authzTimeout)
				resp, err := client.Check(cctx, req)
				cancelCall()
				lat = append(lat, time.Since(start))
				if err == nil && resp.GetOkResponse() == nil {
					err = fmt.Errorf("denied: %s", resp.GetDeniedResponse().GetBody())
				}
				if err != nil {
					mu.Lock()
					firstErr = err
					mu.Unlock()
					cancel()
					return
				}
			}
			mu.Lock()
			all = append(all, lat...)
			mu.Unlock()
		})
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	return all, nil
}

// newServer builds the service with what standalone AMG runs it with,
// its telemetry included; with redisAddr, every Check also counts against
// a (never reached) rate limit in that Redis, as replicas sharing one do.
func newServer(dir, redisAddr string) (*authz.Server, *telemetry.Telemetry, string, func(), error) {
	role := authztest.BenchPolicy
	var limiter authz.Limiter = ratelimit.NewMemory(nil)
	if redisAddr != "" {
		role += "rate_limits:\n  - { requests: 1000000000, per: 1h }\n"
		limiter = ratelimit.NewRedis(redis.NewClient(&redis.Options{Addr: redisAddr, PoolSize: 64}), nil)
	}
	set, err := policy.Compile([]policy.File{{Name: "bench.yaml", Data: []byte(role)}}, nil)
	if err != nil {
		return nil, nil, "", nil, err
	}
	store := tokens.NewMemoryStore()
	secret, _, err := tokens.Issue(context.Background(), store, "load-agent", "bench", 0, time.Now())
	if err != nil {
		return nil, nil, "", nil, err
	}
	dev, err := audit.NewFileDevice(filepath.Join(dir, audit.FileName), nil)
	if err != nil {
		return nil, nil, "", nil, err
	}
	logger := audit.NewLogger([]audit.Device{dev}, &audit.Options{QueueSize: 1 << 16})
	key, err := audit.LoadOrCreateKey(filepath.Join(dir, audit.KeyFileName))
	if err != nil {
		return nil, nil, "", nil, err
	}
	signer, err := authz.NewSigner(key, nil)
	if err != nil {
		return nil, nil, "", nil, err
	}
	tel, err := telemetry.New(context.Background(), &telemetry.Options{ServiceName: "amg"})
	if err != nil {
		return nil, nil, "", nil, err
	}
	srv, err := authz.New(authz.Deps{
		Tokens:   tokens.NewAuthenticator(store, nil),
		Policies: fixedPolicy{set},
		Limiter:  limiter,
		Audit:    logger,
		Redactor: audit.NewRedactor(key),
		Signer:   signer,
	}, &authz.Options{Telemetry: tel})
	if err != nil {
		return nil, nil, "", nil, err
	}
	return srv, tel, secret, func() {
		logger.Close(context.Background())
		tel.Shutdown(context.Background())
	}, nil
}

type fixedPolicy struct{ set *policy.Set }

func (p fixedPolicy) Current() *policy.Set { return p.set }

// allowAll answers every Check at once: the floor that gRPC and loopback
// set under any ext_authz service on this machine.
type allowAll struct {
	authv3.UnimplementedAuthorizationServer
}

func (allowAll) Check(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return &authv3.CheckResponse{HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{}}}, nil
}
