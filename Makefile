# AMG build and test entry points. `make test` is what CI runs.

GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
# Benchmarks the README reports; BENCH_COUNT runs each so medians can be taken.
BENCH_PKGS  ?= ./internal/decision ./mcpfilter ./authz
BENCH_COUNT ?= 6
FUZZ_TIME   ?= 20s
# go-control-plane's generated marshalling code is built only with this tag;
# the authz codec encodes Check responses with it (authz/codec.go).
export GOFLAGS += -tags=vtprotobuf
# Where scripts/setup puts the npm packages and tools the tests run.
export AMG_TOOLS_DIR ?= $(HOME)/.cache/amg-tools

.PHONY: build run setup test vet lint fmt fmt-check check bench bench-e2e load load-redis fuzz clean

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/amg ./cmd/amg

# The gateway, standalone, with embedded defaults and a dev token.
run: build
	./bin/amg serve --dev

# Installs what the tests need; idempotent and quick when all is present.
setup:
	@scripts/setup

test: setup fmt-check vet lint
	$(GO) test -race -count=1 ./...

vet:
	$(GO) vet ./...

lint:
	$(GO) tool staticcheck ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

# Everything in test, plus a short run of every fuzzer.
check: test fuzz

fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZ_TIME) ./mcpfilter
	$(GO) test -run '^$$' -fuzz '^FuzzSplitName$$' -fuzztime $(FUZZ_TIME) ./mcpfilter
	$(GO) test -run '^$$' -fuzz '^FuzzParseArguments$$' -fuzztime $(FUZZ_TIME) ./mcpfilter
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeCheckRequest$$' -fuzztime $(FUZZ_TIME) -fuzzminimizetime 5s ./authz
	$(GO) test -run '^$$' -fuzz '^FuzzDirectCallSplice$$' -fuzztime $(FUZZ_TIME) ./internal/broker
	$(GO) test -run '^$$' -fuzz '^FuzzAgentAnswer$$' -fuzztime $(FUZZ_TIME) ./internal/broker
	$(GO) test -run '^$$' -fuzz '^FuzzURIGlob$$' -fuzztime $(FUZZ_TIME) ./internal/policy
	$(GO) test -run '^$$' -fuzz '^FuzzCompile$$' -fuzztime $(FUZZ_TIME) ./internal/policy
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZ_TIME) ./internal/config
	$(GO) test -run '^$$' -fuzz '^FuzzParseTemplate$$' -fuzztime $(FUZZ_TIME) ./internal/config

bench:
	$(GO) test -run '^$$' -bench . -benchmem -count $(BENCH_COUNT) $(BENCH_PKGS) | tee bench.out

# Check RPCs over loopback gRPC at concurrency 1 and 32, then the floor
# that gRPC and loopback alone set on this machine: from a client that
# works as Envoy's event loop does, then through grpc-go's client, then
# with the server in a process of its own.
load:
	$(GO) run ./bench/checkload -c 1,32 -d 5s
	$(GO) run ./bench/checkload -c 1,32 -d 5s -floor
	$(GO) run ./bench/checkload -c 1,32 -d 5s -client grpc
	$(GO) run ./bench/checkload -c 1,32 -d 5s -client grpc -floor
	$(GO) run ./bench/checkload -c 1,32 -d 5s -separate
	$(GO) run ./bench/checkload -c 1,32 -d 5s -separate -floor

# The same load with every Check counted against a rate limit in a local
# redis-server (started on port 6390 for the run).
load-redis:
	redis-server --port 6390 --bind 127.0.0.1 --save '' --appendonly no --daemonize yes
	$(GO) run ./bench/checkload -c 1,32 -d 5s -redis 127.0.0.1:6390; status=$$?; redis-cli -p 6390 shutdown nosave; exit $$status

# tools/call end to end: direct, through a naive go-sdk proxy, through AMG.
bench-e2e:
	$(GO) run ./bench/e2e -c 1,32 -d 4s -runs 5

clean:
	rm -rf bin bench.out
