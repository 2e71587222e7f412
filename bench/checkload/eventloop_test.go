package main

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/amgateway/amg/authz"
	"github.com/amgateway/amg/authz/authztest"
)

func TestAllowedWireAgreesWithProtobuf(t *testing.T) {
	ok := &authv3.CheckResponse{HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{}}}
	denied := &authv3.CheckResponse{
		Status:       &status.Status{Code: int32(codes.PermissionDenied)},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{Body: "no"}},
	}
	marshal := func(m *authv3.CheckResponse) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	cases := map[string][]byte{
		"ok":             marshal(ok),
		"ok, status OK":  marshal(&authv3.CheckResponse{Status: &status.Status{Message: "fine"}, HttpResponse: ok.HttpResponse}),
		"denied":         marshal(denied),
		"ok, status bad": marshal(&authv3.CheckResponse{Status: &status.Status{Code: -1}, HttpResponse: ok.HttpResponse}),
		"error response": marshal(&authv3.CheckResponse{HttpResponse: &authv3.CheckResponse_ErrorResponse{
			ErrorResponse: &authv3.DeniedHttpResponse{Status: &typev3.HttpStatus{Code: typev3.StatusCode_Forbidden}}}}),
		"no verdict": nil,
		// Concatenated messages merge: the last oneof field wins.
		"denied then ok":            append(marshal(denied), marshal(ok)...),
		"ok then denied":            append(marshal(ok), marshal(denied)...),
		"ok then denied, no status": append(marshal(ok), marshal(&authv3.CheckResponse{HttpResponse: denied.HttpResponse})...),
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			var m authv3.CheckResponse
			if err := proto.Unmarshal(b, &m); err != nil {
				t.Fatal(err)
			}
			want := m.GetOkResponse() != nil && m.GetStatus().GetCode() == 0
			if err := allowedWire(b); (err == nil) != want {
				t.Errorf("allowedWire = %v, protobuf says allowed = %v", err, want)
			}
		})
	}
	for _, cut := range []int{1, 3} {
		b := marshal(denied)
		if err := allowedWire(b[:len(b)-cut]); err == nil || strings.Contains(err.Error(), "not allowed") {
			t.Errorf("truncated by %d: err = %v, want a parse error", cut, err)
		}
	}
}

// recorder allows every Check and keeps what the server saw of each.
type recorder struct {
	authv3.UnimplementedAuthorizationServer
	deny bool

	mu          sync.Mutex
	ids         map[string]int
	noDeadlines int
}

func (r *recorder) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	r.mu.Lock()
	r.ids[req.GetAttributes().GetRequest().GetHttp().GetHeaders()["x-request-id"]]++
	if _, ok := ctx.Deadline(); !ok {
		r.noDeadlines++
	}
	r.mu.Unlock()
	if r.deny {
		return &authv3.CheckResponse{
			Status:       &status.Status{Code: int32(codes.PermissionDenied)},
			HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{Body: "no"}},
		}, nil
	}
	return allowAll{}.Check(ctx, req)
}

func serve(t *testing.T, srv authv3.AuthorizationServer) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(authz.GRPCServerOptions(0)...)
	authv3.RegisterAuthorizationServer(gs, srv)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	return lis.Addr().String()
}

func benchRequest() *authv3.CheckRequest {
	return authztest.EnvoyRequest("POST", map[string]string{"authorization": "Bearer x"}, authztest.BenchBody())
}

// More Checks in flight than the server's initial connection window holds
// make the loop wait for WINDOW_UPDATEs; every Check still completes, each
// with its own request id and a deadline.
func TestEventLoopAgainstGRPCServer(t *testing.T) {
	rec := &recorder{ids: map[string]int{}}
	l, err := dialEventLoop(serve(t, rec), benchRequest())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	const inFlight = 40
	if size := inFlight * len(l.framed); size <= 65535 {
		t.Fatalf("%d Checks of %d bytes fit in the initial window: the test would not wait for one", inFlight, len(l.framed))
	}
	for range 2 { // the connection serves a second run as it does a measured level after warm-up
		lat, err := l.run(inFlight, time.Now().Add(300*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		if len(lat) < inFlight {
			t.Fatalf("%d Checks completed, want at least %d", len(lat), inFlight)
		}
	}
	if l.held == 0 {
		t.Error("no Check waited for connection window")
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for id, n := range rec.ids {
		if n != 1 {
			t.Errorf("request id %s sent %d times", id, n)
		}
	}
	if uint64(len(rec.ids)) != l.count {
		t.Errorf("server saw %d request ids, the loop sent %d Checks", len(rec.ids), l.count)
	}
	if rec.noDeadlines != 0 {
		t.Errorf("%d Checks reached the server without a deadline", rec.noDeadlines)
	}
}

func TestEventLoopStopsOnDenial(t *testing.T) {
	l, err := dialEventLoop(serve(t, &recorder{ids: map[string]int{}, deny: true}), benchRequest())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := l.run(1, time.Now().Add(time.Second)); err == nil || !strings.Contains(err.Error(), "not allowed") {
		t.Fatalf("run = %v, want the denial reported", err)
	}
}

func TestEventLoopReportsGRPCErrors(t *testing.T) {
	// A server without the Authorization service answers Unimplemented.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	go gs.Serve(lis)
	defer gs.Stop()
	l, err := dialEventLoop(lis.Addr().String(), benchRequest())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := l.run(1, time.Now().Add(time.Second)); err == nil || !strings.Contains(err.Error(), `grpc-status "12"`) {
		t.Fatalf("run = %v, want grpc-status 12 (Unimplemented)", err)
	}
}
