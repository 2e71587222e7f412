package telemetry

import (
	"context"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/trace"
)

// The metrics recorded on every request, a decision's and an upstream
// call's duration, are aggregated here rather than by the SDK's
// instruments, and reach the readers as an external producer
// (sdkmetric.WithProducer). Through the SDK a decision's two measurements
// took about 1.1 µs and two allocations (BenchmarkRecordDecision): the
// attribute set's equivalence key, a lock, exemplar filtering and option
// slices that escape to the heap. Here a measurement is a read-locked map
// lookup and two atomic adds.
//
// The data are what the SDK would report for a cumulative explicit-bucket
// histogram: a bucket counts the values up to and including its bound,
// min and max are kept, and an exemplar per bucket keeps the last
// measurement made in a sampled trace, when exemplars are on. A duration
// histogram can also be reported as a counter of its measurements, as
// amg.decisions is.

// Descriptions of the per-request metrics.
const (
	descDecisions        = "Policy decisions made, by role, verdict, mode and reason code."
	descDecisionDuration = "Time spent evaluating policy for one tool call."
	descUpstreamDuration = "Duration of calls forwarded to upstream MCP servers."
)

// maxSeries bounds the attribute sets of each per-request metric; the
// values come from small fixed sets, so it is never reached unless
// something is wrong.
const maxSeries = 4096

// overflowSet holds the measurements of attribute sets beyond maxSeries,
// as the SDK's cardinality limit does.
var overflowSet = attribute.NewSet(attribute.Bool("otel.metric.overflow", true))

// durations is a histogram of durations per attribute set, keyed by the
// attribute values.
type durations[K comparable] struct {
	bounds []float64       // in seconds, as reported
	limits []time.Duration // the same bounds, for the bucket search
	attrs  func(K) attribute.Set
	// exemplars: keep one per bucket. Set once, before any measurement.
	exemplars bool

	mu       sync.RWMutex
	series   map[K]*series
	overflow *series
}

// series is one attribute set's cumulative histogram.
type series struct {
	attrs     attribute.Set
	start     time.Time
	sum       atomic.Int64 // nanoseconds
	min, max  atomic.Int64 // nanoseconds; min starts at math.MaxInt64
	counts    []atomic.Uint64
	exemplars []atomic.Pointer[metricdata.Exemplar[float64]]
}

func newDurations[K comparable](bounds []float64, attrs func(K) attribute.Set) *durations[K] {
	d := &durations[K]{bounds: bounds, attrs: attrs, series: map[K]*series{}}
	for _, b := range bounds {
		d.limits = append(d.limits, time.Duration(b*float64(time.Second)))
	}
	return d
}

// record adds one measurement of took to the series of k. A span sampled
// in ctx makes it its bucket's exemplar.
func (d *durations[K]) record(ctx context.Context, k K, took time.Duration) {
	d.mu.RLock()
	s := d.series[k]
	d.mu.RUnlock()
	if s == nil {
		s = d.add(k)
	}
	i := 0
	for i < len(d.limits) && took > d.limits[i] {
		i++
	}
	// The extremes first, so that a count read means they are set.
	lower(&s.min, int64(took))
	raise(&s.max, int64(took))
	s.counts[i].Add(1)
	s.sum.Add(int64(took))
	if d.exemplars {
		if sc := trace.SpanContextFromContext(ctx); sc.IsSampled() {
			tid, sid := sc.TraceID(), sc.SpanID()
			s.exemplars[i].Store(&metricdata.Exemplar[float64]{
				Time: time.Now(), Value: took.Seconds(), TraceID: tid[:], SpanID: sid[:],
			})
		}
	}
}

// lower sets a to v if v is lower; once the minimum settles, that is one
// load.
func lower(a *atomic.Int64, v int64) {
	for cur := a.Load(); v < cur && !a.CompareAndSwap(cur, v); cur = a.Load() {
	}
}

// raise sets a to v if v is higher.
func raise(a *atomic.Int64, v int64) {
	for cur := a.Load(); v > cur && !a.CompareAndSwap(cur, v); cur = a.Load() {
	}
}

// add makes the series of k, or returns the overflow series when there
// are too many.
func (d *durations[K]) add(k K) *series {
	attrs := d.attrs(k) // sorts and allocates: outside the lock
	d.mu.Lock()
	defer d.mu.Unlock()
	if s := d.series[k]; s != nil {
		return s
	}
	if len(d.series) >= maxSeries {
		if d.overflow == nil {
			d.overflow = d.newSeries(overflowSet)
		}
		return d.overflow
	}
	s := d.newSeries(attrs)
	d.series[k] = s
	return s
}

func (d *durations[K]) newSeries(attrs attribute.Set) *series {
	s := &series{
		attrs:     attrs,
		start:     time.Now(),
		counts:    make([]atomic.Uint64, len(d.limits)+1),
		exemplars: make([]atomic.Pointer[metricdata.Exemplar[float64]], len(d.limits)+1),
	}
	s.min.Store(math.MaxInt64)
	s.max.Store(math.MinInt64)
	return s
}

// all returns every series, the overflow last.
func (d *durations[K]) all() []*series {
	d.mu.RLock()
	defer d.mu.RUnlock()
	out := make([]*series, 0, len(d.series)+1)
	for _, s := range d.series {
		out = append(out, s)
	}
	if d.overflow != nil {
		out = append(out, d.overflow)
	}
	return out
}

// report sets histogram's data to the series as a cumulative histogram,
// and count's to a monotonic counter of the same measurements; either may
// be nil. The count is always the buckets' total; a measurement made while
// this reads may be in the sum and not yet in the count.
func (d *durations[K]) report(now time.Time, histogram, count *metricdata.Metrics) {
	all := d.all()
	if len(all) == 0 {
		return
	}
	var hist metricdata.Histogram[float64]
	var sum metricdata.Sum[int64]
	hist.Temporality = metricdata.CumulativeTemporality
	sum.Temporality, sum.IsMonotonic = metricdata.CumulativeTemporality, true
	for _, s := range all {
		p := metricdata.HistogramDataPoint[float64]{
			Attributes: s.attrs, StartTime: s.start, Time: now,
			Bounds:       d.bounds,
			BucketCounts: make([]uint64, len(s.counts)),
		}
		for i := range s.counts {
			p.BucketCounts[i] = s.counts[i].Load()
			p.Count += p.BucketCounts[i]
			if e := s.exemplars[i].Load(); e != nil {
				p.Exemplars = append(p.Exemplars, *e)
			}
		}
		p.Sum = time.Duration(s.sum.Load()).Seconds()
		if p.Count > 0 {
			p.Min = metricdata.NewExtrema(time.Duration(s.min.Load()).Seconds())
			p.Max = metricdata.NewExtrema(time.Duration(s.max.Load()).Seconds())
		}
		hist.DataPoints = append(hist.DataPoints, p)
		sum.DataPoints = append(sum.DataPoints, metricdata.DataPoint[int64]{
			Attributes: s.attrs, StartTime: s.start, Time: now, Value: int64(p.Count),
		})
	}
	if histogram != nil {
		histogram.Data = hist
	}
	if count != nil {
		count.Data = sum
	}
}

// requestMetrics produces the per-request metrics for every reader.
type requestMetrics struct {
	scope     instrumentation.Scope
	decisions *durations[[4]string] // role, verdict, mode, code
	upstream  *durations[[2]string] // server, status
}

func newRequestMetrics(version string, exemplars bool) *requestMetrics {
	m := &requestMetrics{
		scope: instrumentation.Scope{Name: ScopeName, Version: version},
		decisions: newDurations(decisionBuckets, func(k [4]string) attribute.Set {
			return attribute.NewSet(KeyRole.String(k[0]), KeyVerdict.String(k[1]), KeyMode.String(k[2]), KeyCode.String(k[3]))
		}),
		upstream: newDurations(upstreamBuckets, func(k [2]string) attribute.Set {
			return attribute.NewSet(KeyServer.String(k[0]), KeyStatus.String(k[1]))
		}),
	}
	m.decisions.exemplars, m.upstream.exemplars = exemplars, exemplars
	return m
}

// Produce implements sdkmetric.Producer. Metrics with no measurements are
// left out, as the SDK leaves out its unused instruments.
func (m *requestMetrics) Produce(context.Context) ([]metricdata.ScopeMetrics, error) {
	now := time.Now()
	count := metricdata.Metrics{Name: MetricDecisions, Description: descDecisions, Unit: "{decision}"}
	took := metricdata.Metrics{Name: MetricDecisionDuration, Description: descDecisionDuration, Unit: "s"}
	upstream := metricdata.Metrics{Name: MetricUpstreamDuration, Description: descUpstreamDuration, Unit: "s"}
	m.decisions.report(now, &took, &count)
	m.upstream.report(now, &upstream, nil)
	sm := metricdata.ScopeMetrics{Scope: m.scope}
	for _, x := range []metricdata.Metrics{count, took, upstream} {
		if x.Data != nil {
			sm.Metrics = append(sm.Metrics, x)
		}
	}
	if len(sm.Metrics) == 0 {
		return nil, nil
	}
	return []metricdata.ScopeMetrics{sm}, nil
}
