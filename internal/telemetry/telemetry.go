// Package telemetry sets up OpenTelemetry tracing and metrics for the AMG
// gateway and owns the gateway's instruments.
//
// A Telemetry value bundles a TracerProvider, a MeterProvider, a W3C
// trace context propagator and a Prometheus exporter on a private
// registry, so the admin listener can serve GET /metrics. When asked to, it
// also exports traces and metrics over OTLP/HTTP, configured by the standard
// OTEL_EXPORTER_OTLP_* environment variables.
//
// The gateway's metrics are recorded only through typed methods
// (RecordDecision, RecordUpstream, ...). That is deliberate: each method fixes
// the instrument name and the attribute keys, and accepts only low-cardinality
// values (role, verdict, mode, server, status, code). Tool-call argument
// values, agent tokens and decision ids have no parameter to go into, so they
// cannot leak into metrics. Spans may carry an agent name and a decision id
// (see DecisionAttributes), but never argument values.
//
// New never installs anything in the otel global state (no
// otel.SetTracerProvider, otel.SetMeterProvider or
// otel.SetTextMapPropagator). Callers pass the Telemetry value, or its
// Tracer, Meter and Propagator, to whatever needs them. This keeps several
// Telemetry values in one process (as in tests) independent of each other.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/exemplar"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// ScopeName is the instrumentation scope of the gateway's tracer and meter.
const ScopeName = "github.com/amgateway/amg"

// DefaultServiceName is used when Options.ServiceName is empty.
const DefaultServiceName = "amg"

// Instrument names. They are exported so dashboards, alerts and tests can
// refer to one spelling. The Prometheus exporter turns dots into underscores
// and adds unit and _total suffixes, e.g. amg.decisions becomes
// amg_decisions_total and amg.decision.duration becomes
// amg_decision_duration_seconds.
const (
	MetricDecisions        = "amg.decisions"
	MetricDecisionDuration = "amg.decision.duration"
	MetricUpstreamDuration = "amg.upstream.duration"
	MetricUpstreamErrors   = "amg.upstream.errors"
	MetricShadowDenies     = "amg.shadow.denies"
	MetricRateLimited      = "amg.rate_limited"
	MetricAuditFailures    = "amg.audit.failures"
	MetricPendingApprovals = "amg.approvals.pending"
	MetricAuditQueue       = "amg.audit.queue"
)

// Metric attribute keys. These are the only keys the gateway's metrics use;
// each holds a value from a small, operator-controlled set.
const (
	KeyRole    = attribute.Key("role")
	KeyVerdict = attribute.Key("verdict")
	KeyMode    = attribute.Key("mode")
	KeyCode    = attribute.Key("code")
	KeyServer  = attribute.Key("server")
	KeyStatus  = attribute.Key("status")
)

// Span attribute keys set by DecisionAttributes. They live under amg. so they
// cannot collide with semantic-convention keys.
const (
	SpanKeyAgent         = attribute.Key("amg.agent")
	SpanKeyRole          = attribute.Key("amg.role")
	SpanKeyServer        = attribute.Key("amg.server")
	SpanKeyTool          = attribute.Key("amg.tool")
	SpanKeyVerdict       = attribute.Key("amg.verdict")
	SpanKeyShadowVerdict = attribute.Key("amg.shadow_verdict")
	SpanKeyRule          = attribute.Key("amg.rule")
	SpanKeyPolicyVersion = attribute.Key("amg.policy_version")
	SpanKeyDecisionID    = attribute.Key("amg.decision_id")
)

// StatusOK is the upstream status that RecordUpstream does not count as an
// error.
const StatusOK = "ok"

// Histogram boundaries, in seconds. A policy decision is in-process CEL
// evaluation, normally tens of microseconds to a few milliseconds, so the
// buckets are dense between 10 µs and 10 ms with a few above for outliers.
// Upstream calls are network round trips to MCP servers and span
// milliseconds to tens of seconds.
var (
	decisionBuckets = []float64{
		0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
		0.001, 0.0025, 0.005, 0.01, 0.025, 0.1,
	}
	upstreamBuckets = []float64{
		0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
		1, 2.5, 5, 10, 30, 60,
	}
)

// Options configure New. A nil *Options means all defaults.
type Options struct {
	// ServiceName and ServiceVersion become the service.name and
	// service.version resource attributes. OTEL_SERVICE_NAME and
	// OTEL_RESOURCE_ATTRIBUTES, when set, take precedence, as the
	// OpenTelemetry specification requires.
	ServiceName    string
	ServiceVersion string

	// Logger receives setup messages and errors from the /metrics handler
	// and gauge callbacks. Nil means slog.Default().
	Logger *slog.Logger

	// OTLP enables export over OTLP/HTTP (protobuf), configured by the
	// standard environment variables (OTEL_EXPORTER_OTLP_ENDPOINT,
	// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_METRICS_ENDPOINT,
	// OTEL_EXPORTER_OTLP_HEADERS, ...). A signal whose endpoint is not set
	// by any of those variables gets no exporter, so enabling OTLP on a host
	// without a collector does not produce a stream of connection errors.
	OTLP bool

	// SpanExporter, if set, receives every span synchronously when it ends.
	// It is meant for tests (tracetest.NewInMemoryExporter), where spans
	// must be visible as soon as End returns.
	SpanExporter sdktrace.SpanExporter

	// MetricReader, if set, makes a reader to attach to the MeterProvider
	// next to the Prometheus exporter. The reader must take the producer it
	// is given (sdkmetric.WithProducer), which holds the metrics recorded
	// per request. It is meant for tests:
	//
	//	func(p sdkmetric.Producer) sdkmetric.Reader {
	//		return sdkmetric.NewManualReader(sdkmetric.WithProducer(p))
	//	}
	MetricReader func(sdkmetric.Producer) sdkmetric.Reader
}

// Telemetry owns the providers, exporters and instruments of one gateway
// process. Its methods are safe for concurrent use.
type Telemetry struct {
	logger     *slog.Logger
	tp         *sdktrace.TracerProvider
	mp         *sdkmetric.MeterProvider
	tracer     trace.Tracer
	meter      metric.Meter
	propagator propagation.TextMapPropagator
	registry   *prometheus.Registry
	handler    http.Handler

	// otlpTraces and otlpMetrics record whether an OTLP exporter was
	// created for each signal.
	otlpTraces  bool
	otlpMetrics bool
	// tracing: spans are recorded, for an exporter to receive.
	tracing bool

	// The metrics recorded per request (aggregate.go).
	perRequest *requestMetrics

	upstreamErrors   metric.Int64Counter
	shadowDenies     metric.Int64Counter
	rateLimited      metric.Int64Counter
	auditFailures    metric.Int64Counter
	pendingApprovals metric.Int64ObservableGauge
	auditQueue       metric.Int64ObservableGauge

	// The gauge callbacks are registered once in New and read these, so
	// Observe* can be called (or called again) at any time without managing
	// registrations.
	pendingFn atomic.Pointer[func(context.Context) (int64, error)]
	queueFn   atomic.Pointer[func() int64]

	shutdownOnce sync.Once
	shutdownErr  error
}

// New builds a Telemetry. It never touches the otel globals; see the
// package documentation. Call Shutdown to flush and stop it.
func New(ctx context.Context, opts *Options) (*Telemetry, error) {
	if opts == nil {
		opts = &Options{}
	}
	t := &Telemetry{
		logger: opts.Logger,
		// Trace context only, without the caller's tracestate: W3C
		// baggage and tracestate are whatever the agent put in them, and
		// the gateway would carry them to every upstream, past the
		// policy.
		propagator: traceParentOnly{},
		registry:   prometheus.NewRegistry(),
	}
	if t.logger == nil {
		t.logger = slog.Default()
	}

	res, err := newResource(ctx, opts)
	if err != nil {
		return nil, err
	}

	var traceExp sdktrace.SpanExporter
	var metricExp sdkmetric.Exporter
	if opts.OTLP {
		traceExp, metricExp, err = newOTLPExporters(ctx)
		if err != nil {
			return nil, err
		}
	}
	// Until the providers own the exporters, a failure must stop them here.
	cleanup := func() {
		if traceExp != nil {
			_ = traceExp.Shutdown(ctx)
		}
		if metricExp != nil {
			_ = metricExp.Shutdown(ctx)
		}
	}

	// A private registry keeps two Telemetry values (or a test and the
	// gateway) from registering the same collector twice, and keeps
	// unrelated libraries' metrics off the gateway's /metrics.
	exemplars := metricExp != nil || opts.MetricReader != nil
	t.perRequest = newRequestMetrics(opts.ServiceVersion, exemplars)
	promExp, err := otelprom.New(otelprom.WithRegisterer(t.registry), otelprom.WithProducer(t.perRequest))
	if err != nil {
		cleanup()
		return nil, fmt.Errorf("telemetry: create prometheus exporter: %w", err)
	}
	// Process and Go runtime metrics are what an operator looks at first
	// when the gateway misbehaves, so they are served next to amg_*.
	if err := t.registry.Register(collectors.NewGoCollector()); err != nil {
		cleanup()
		return nil, fmt.Errorf("telemetry: register go collector: %w", err)
	}
	if err := t.registry.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})); err != nil {
		cleanup()
		return nil, fmt.Errorf("telemetry: register process collector: %w", err)
	}

	sampler, err := samplerFromEnv()
	if err != nil {
		cleanup()
		return nil, err
	}
	tpOpts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res), sdktrace.WithRawSpanLimits(spanLimits()),
		sdktrace.WithSampler(sampler)}
	// Every exporter gets spans with their URLs redacted (redactingExporter).
	if traceExp != nil {
		tpOpts = append(tpOpts, sdktrace.WithBatcher(redactingExporter{traceExp}))
	}
	if opts.SpanExporter != nil {
		tpOpts = append(tpOpts, sdktrace.WithSyncer(redactingExporter{opts.SpanExporter}))
	}
	if traceExp == nil && opts.SpanExporter == nil {
		// No one receives spans: do not record them (the request path pays
		// for every recorded span). Trace context still propagates, and
		// trace ids still reach the audit log.
		tpOpts = append(tpOpts, sdktrace.WithSampler(sdktrace.NeverSample()))
	}
	t.tp = sdktrace.NewTracerProvider(tpOpts...)

	mpOpts := []sdkmetric.Option{sdkmetric.WithResource(res), sdkmetric.WithReader(promExp)}
	if metricExp != nil {
		// The periodic reader honours OTEL_METRIC_EXPORT_INTERVAL and
		// OTEL_METRIC_EXPORT_TIMEOUT, and exports once more on Shutdown.
		mpOpts = append(mpOpts, sdkmetric.WithReader(sdkmetric.NewPeriodicReader(metricExp,
			sdkmetric.WithProducer(t.perRequest))))
	}
	if opts.MetricReader != nil {
		mpOpts = append(mpOpts, sdkmetric.WithReader(opts.MetricReader(t.perRequest)))
	}
	if !exemplars {
		// Exemplars tie a measurement to the trace it was made in, and
		// only an OTLP exporter (or a test's reader) carries them: the
		// Prometheus handler serves the text format, which has none.
		// Offering every measurement to reservoirs no one reads made
		// the SDK's instruments about a tenth slower. The per-request
		// metrics (aggregate.go) keep exemplars on the same terms.
		mpOpts = append(mpOpts, sdkmetric.WithExemplarFilter(exemplar.AlwaysOffFilter))
	}
	t.mp = sdkmetric.NewMeterProvider(mpOpts...)
	t.otlpTraces, t.otlpMetrics = traceExp != nil, metricExp != nil
	t.tracing = traceExp != nil || opts.SpanExporter != nil

	version := opts.ServiceVersion
	t.tracer = t.tp.Tracer(ScopeName, trace.WithInstrumentationVersion(version))
	t.meter = t.mp.Meter(ScopeName, metric.WithInstrumentationVersion(version))

	if err := t.createInstruments(); err != nil {
		// The providers own the exporters now; shutting them down stops
		// the exporters too.
		_ = t.Shutdown(ctx)
		return nil, err
	}

	t.handler = promhttp.HandlerFor(t.registry, promhttp.HandlerOpts{
		ErrorLog: slogPrintln{t.logger},
		// One broken metric should not hide all the others from a scrape.
		ErrorHandling: promhttp.ContinueOnError,
	})
	return t, nil
}

// maxAttributeLength caps the length of every span attribute's value.
// otelhttp records the User-Agent, path and host of every request before
// it is authenticated, and a header may be up to 1 MiB: uncapped, a few
// anonymous requests fill the export queue and push one OTLP export past
// the collector's limit, which drops the whole batch, decision spans of
// other agents with it.
const maxAttributeLength = 1024

// spanLimits are the SDK's, from the environment, with attribute values
// capped at maxAttributeLength: OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT may
// lower the cap, never lift it.
func spanLimits() sdktrace.SpanLimits {
	sl := sdktrace.NewSpanLimits()
	if sl.AttributeValueLengthLimit < 0 || sl.AttributeValueLengthLimit > maxAttributeLength {
		sl.AttributeValueLengthLimit = maxAttributeLength
	}
	return sl
}

// samplerFromEnv is the sampler OTEL_TRACES_SAMPLER and
// OTEL_TRACES_SAMPLER_ARG name (every trace when unset), deciding alone
// wherever a trace comes from outside the process. A propagated parent's
// sampled flag is what the agent wrote, directly or through Envoy, which
// keeps it: followed, an agent sending 00 would keep its decisions out of
// the trace backend while the audit log links their trace, and one sending
// 01 would have all its requests recorded whatever the operator's ratio.
// Every sampler follows a parent inside the process, so the parentbased_
// forms mean the same as the others. The SDK would log an unknown sampler
// or a bad ratio and trace every request; New refuses them.
func samplerFromEnv() (sdktrace.Sampler, error) {
	name := strings.ToLower(strings.TrimSpace(os.Getenv("OTEL_TRACES_SAMPLER")))
	arg := strings.TrimSpace(os.Getenv("OTEL_TRACES_SAMPLER_ARG"))
	var root sdktrace.Sampler
	switch name {
	case "", "always_on", "parentbased_always_on":
		root = sdktrace.AlwaysSample()
	case "always_off", "parentbased_always_off":
		root = sdktrace.NeverSample()
	case "traceidratio", "parentbased_traceidratio":
		ratio := 1.0
		if arg != "" {
			var err error
			ratio, err = strconv.ParseFloat(arg, 64)
			if err != nil || !(ratio >= 0 && ratio <= 1) {
				return nil, fmt.Errorf("telemetry: OTEL_TRACES_SAMPLER_ARG=%q is not a ratio between 0 and 1", arg)
			}
		}
		root = sdktrace.TraceIDRatioBased(ratio)
	default:
		return nil, fmt.Errorf("telemetry: OTEL_TRACES_SAMPLER=%q is not supported: use always_on, always_off, traceidratio or their parentbased_ forms", name)
	}
	return sdktrace.ParentBased(root,
		sdktrace.WithRemoteParentSampled(root), sdktrace.WithRemoteParentNotSampled(root)), nil
}

// newResource describes this process. Detectors later in the list win, so
// the environment overrides the options, as the specification asks.
func newResource(ctx context.Context, opts *Options) (*resource.Resource, error) {
	name := opts.ServiceName
	if name == "" {
		name = DefaultServiceName
	}
	attrs := []attribute.KeyValue{semconv.ServiceName(name)}
	if opts.ServiceVersion != "" {
		attrs = append(attrs, semconv.ServiceVersion(opts.ServiceVersion))
	}
	res, err := resource.New(ctx,
		resource.WithSchemaURL(semconv.SchemaURL),
		resource.WithTelemetrySDK(),
		resource.WithAttributes(attrs...),
		resource.WithFromEnv(),
	)
	if err != nil {
		return nil, fmt.Errorf("telemetry: build resource: %w", err)
	}
	return res, nil
}

// newOTLPExporters creates an OTLP/HTTP exporter for each signal whose
// endpoint is configured in the environment. The exporters read every other
// OTEL_EXPORTER_OTLP_* variable themselves.
func newOTLPExporters(ctx context.Context) (sdktrace.SpanExporter, sdkmetric.Exporter, error) {
	// The HTTP exporters silently treat "grpc" as http/protobuf, which would
	// send HTTP requests to a gRPC port; the metric exporter cannot do JSON.
	// Refuse both rather than export nothing without a word.
	for _, v := range []string{
		"OTEL_EXPORTER_OTLP_PROTOCOL",
		"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
		"OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
	} {
		if p := strings.TrimSpace(os.Getenv(v)); p != "" && p != "http/protobuf" {
			return nil, nil, fmt.Errorf("telemetry: %s=%q is not supported: amg exports OTLP over http/protobuf only", v, p)
		}
	}

	var traceExp sdktrace.SpanExporter
	if envSet("OTEL_EXPORTER_OTLP_ENDPOINT") || envSet("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
		exp, err := otlptracehttp.New(ctx)
		if err != nil {
			return nil, nil, fmt.Errorf("telemetry: create otlp trace exporter: %w", err)
		}
		traceExp = exp
	}

	var metricExp sdkmetric.Exporter
	if envSet("OTEL_EXPORTER_OTLP_ENDPOINT") || envSet("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") {
		exp, err := otlpmetrichttp.New(ctx)
		if err != nil {
			if traceExp != nil {
				_ = traceExp.Shutdown(ctx)
			}
			return nil, nil, fmt.Errorf("telemetry: create otlp metric exporter: %w", err)
		}
		metricExp = exp
	}
	return traceExp, metricExp, nil
}

func envSet(name string) bool { return strings.TrimSpace(os.Getenv(name)) != "" }

func (t *Telemetry) createInstruments() error {
	var errs []error
	counter := func(name, desc, unit string) metric.Int64Counter {
		c, err := t.meter.Int64Counter(name, metric.WithDescription(desc), metric.WithUnit(unit))
		errs = append(errs, err)
		return c
	}
	gauge := func(name, desc, unit string) metric.Int64ObservableGauge {
		g, err := t.meter.Int64ObservableGauge(name, metric.WithDescription(desc), metric.WithUnit(unit))
		errs = append(errs, err)
		return g
	}
	t.upstreamErrors = counter(MetricUpstreamErrors, "Upstream MCP calls that did not end with status ok.", "{error}")
	t.shadowDenies = counter(MetricShadowDenies, "Calls the shadow policy would have denied or made wait for approval.", "{decision}")
	t.rateLimited = counter(MetricRateLimited, "Calls rejected by rate limiting.", "{call}")
	t.auditFailures = counter(MetricAuditFailures, "Audit records that could not be written.", "{record}")
	t.pendingApprovals = gauge(MetricPendingApprovals, "Approval requests waiting for a human.", "{request}")
	t.auditQueue = gauge(MetricAuditQueue, "Audit records queued and not yet written.", "{record}")
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("telemetry: create instruments: %w", err)
	}

	if _, err := t.meter.RegisterCallback(t.observeGauges, t.pendingApprovals, t.auditQueue); err != nil {
		return fmt.Errorf("telemetry: register gauge callback: %w", err)
	}
	return nil
}

// observeGauges runs on every collection (scrape or export).
func (t *Telemetry) observeGauges(ctx context.Context, o metric.Observer) error {
	if fn := t.pendingFn.Load(); fn != nil {
		n, err := (*fn)(ctx)
		if err != nil {
			// Reporting a stale or zero value would look like "no pending
			// approvals"; leaving the point out makes the gap visible.
			t.logger.Warn("telemetry: pending approvals callback failed", "err", err)
		} else {
			o.ObserveInt64(t.pendingApprovals, n)
		}
	}
	if fn := t.queueFn.Load(); fn != nil {
		o.ObserveInt64(t.auditQueue, (*fn)())
	}
	return nil
}

// Tracer returns the gateway's tracer.
func (t *Telemetry) Tracer() trace.Tracer { return t.tracer }

// Meter returns the gateway's meter, for instruments this package does not
// define. Prefer the Record* methods for the gateway's own metrics.
func (t *Telemetry) Meter() metric.Meter { return t.meter }

// TracerProvider returns the provider behind Tracer, for instrumentation
// libraries that take a provider (otelhttp, otelgrpc).
func (t *Telemetry) TracerProvider() trace.TracerProvider { return t.tp }

// MeterProvider returns the provider behind Meter, for instrumentation
// libraries that take a provider.
func (t *Telemetry) MeterProvider() metric.MeterProvider { return t.mp }

// Propagator returns the W3C trace context propagator used to carry trace
// context across HTTP and gRPC hops. Baggage is not carried, nor a
// caller's tracestate.
func (t *Telemetry) Propagator() propagation.TextMapPropagator { return t.propagator }

// traceParentOnly is the W3C trace context propagator, except that what it
// extracts loses its tracestate: up to 32 members of the agent's choosing,
// which every span in the trace inherits and every upstream would be
// sent. The gateway writes no tracestate of its own.
type traceParentOnly struct{ propagation.TraceContext }

func (p traceParentOnly) Extract(ctx context.Context, carrier propagation.TextMapCarrier) context.Context {
	ctx = p.TraceContext.Extract(ctx, carrier)
	if sc := trace.SpanContextFromContext(ctx); sc.IsRemote() && sc.TraceState().Len() > 0 {
		ctx = trace.ContextWithRemoteSpanContext(ctx, sc.WithTraceState(trace.TraceState{}))
	}
	return ctx
}

// MetricsHandler serves the metrics in the Prometheus text format, for
// GET /metrics on the admin listener.
func (t *Telemetry) MetricsHandler() http.Handler { return t.handler }

// Shutdown flushes pending spans and metrics (including a last OTLP export)
// and stops all providers and exporters. Later calls return the first
// call's result.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	t.shutdownOnce.Do(func() {
		var errs []error
		if err := t.tp.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("shut down tracer provider: %w", err))
		}
		if err := t.mp.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("shut down meter provider: %w", err))
		}
		if len(errs) > 0 {
			t.shutdownErr = fmt.Errorf("telemetry: %w", errors.Join(errs...))
		}
	})
	return t.shutdownErr
}

// RecordDecision counts one policy decision and its evaluation time.
// role is the caller's role, verdict the outcome (allow, deny, ...), mode the
// enforcement mode (enforce, shadow, ...) and code the reason code; all must
// come from small fixed sets.
func (t *Telemetry) RecordDecision(ctx context.Context, role, verdict, mode, code string, d time.Duration) {
	t.perRequest.decisions.record(ctx, [4]string{role, verdict, mode, code}, d)
}

// RecordUpstream records the duration of one call to an upstream MCP server
// and counts it as an error unless status is StatusOK. server is the
// configured server name, status a short outcome word (ok, tool_error,
// error).
func (t *Telemetry) RecordUpstream(ctx context.Context, server, status string, d time.Duration) {
	t.perRequest.upstream.record(ctx, [2]string{server, status}, d)
	if status != StatusOK {
		t.upstreamErrors.Add(ctx, 1, metric.WithAttributeSet(
			attribute.NewSet(KeyServer.String(server))))
	}
}

// RecordShadowDeny counts a call that the shadow policy would have denied,
// or made wait for approval.
func (t *Telemetry) RecordShadowDeny(ctx context.Context, role string) {
	t.shadowDenies.Add(ctx, 1, metric.WithAttributeSet(attribute.NewSet(KeyRole.String(role))))
}

// RecordRateLimited counts a call rejected by rate limiting.
func (t *Telemetry) RecordRateLimited(ctx context.Context, role string) {
	t.rateLimited.Add(ctx, 1, metric.WithAttributeSet(attribute.NewSet(KeyRole.String(role))))
}

// RecordAuditFailure counts an audit record that could not be written.
func (t *Telemetry) RecordAuditFailure(ctx context.Context) {
	t.auditFailures.Add(ctx, 1)
}

// ObservePendingApprovals sets the function that reports the number of
// pending approvals on each collection. A later call replaces the earlier
// function; nil stops reporting. When fn returns an error no value is
// reported for that collection.
func (t *Telemetry) ObservePendingApprovals(fn func(context.Context) (int64, error)) {
	if fn == nil {
		t.pendingFn.Store(nil)
		return
	}
	t.pendingFn.Store(&fn)
}

// ObserveAuditQueue sets the function that reports the audit queue depth on
// each collection. A later call replaces the earlier function; nil stops
// reporting. fn runs during scrapes, so it must be cheap and must not block.
func (t *Telemetry) ObserveAuditQueue(fn func() int64) {
	if fn == nil {
		t.queueFn.Store(nil)
		return
	}
	t.queueFn.Store(&fn)
}

// StartDecisionSpan starts an internal span for a policy decision as a child
// of the span (local or propagated) in ctx. Set its attributes with
// span.SetAttributes(DecisionAttributes(...)...) and End it.
func (t *Telemetry) StartDecisionSpan(ctx context.Context, name string) (context.Context, trace.Span) {
	return t.tracer.Start(ctx, name, internalSpan)
}

// internalSpan is made once: each option built costs an allocation.
var internalSpan = trace.WithSpanKind(trace.SpanKindInternal)

// DecisionAttributes returns the span attributes describing one decision,
// under the amg. prefix. Empty values are left out, so a call outside shadow
// mode carries no amg.shadow_verdict. There is intentionally no parameter
// for tool-call arguments: they may hold secrets or personal data and must
// never reach a trace backend. These attributes are for spans only; agent
// and decision id are too high-cardinality for metrics.
func DecisionAttributes(agent, role, server, tool, verdict, shadowVerdict, rule, policyVersion, decisionID string) []attribute.KeyValue {
	all := [...]attribute.KeyValue{
		SpanKeyAgent.String(agent),
		SpanKeyRole.String(role),
		SpanKeyServer.String(server),
		SpanKeyTool.String(tool),
		SpanKeyVerdict.String(verdict),
		SpanKeyShadowVerdict.String(shadowVerdict),
		SpanKeyRule.String(rule),
		SpanKeyPolicyVersion.String(policyVersion),
		SpanKeyDecisionID.String(decisionID),
	}
	out := make([]attribute.KeyValue, 0, len(all))
	for _, kv := range all {
		if kv.Value.AsString() != "" {
			out = append(out, kv)
		}
	}
	return out
}

// TraceID returns the hex trace id of the span in ctx, or "" if there is
// none, for linking audit records to traces.
func TraceID(ctx context.Context) string {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.HasTraceID() {
		return ""
	}
	return sc.TraceID().String()
}

// slogPrintln adapts slog to the Println-style logger promhttp expects.
type slogPrintln struct{ l *slog.Logger }

func (s slogPrintln) Println(v ...any) {
	s.l.Error("telemetry: serving metrics", "err", strings.TrimSuffix(fmt.Sprintln(v...), "\n"))
}
