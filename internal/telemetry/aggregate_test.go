package telemetry

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/metric/metricdata/metricdatatest"
)

// The per-request histograms must report what the SDK's own histogram
// reports for the same measurements: the same buckets, bucket counts, sum,
// count, min and max per attribute set. Values on and around every bound
// check which side of a bound a value falls.
func TestDurationsAgreeWithSDKHistogram(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { mp.Shutdown(context.Background()) })
	sdkHist, err := mp.Meter("test").Float64Histogram("d", metric.WithExplicitBucketBoundaries(upstreamBuckets...))
	if err != nil {
		t.Fatal(err)
	}
	ours := newDurations(upstreamBuckets, func(k [2]string) attribute.Set {
		return attribute.NewSet(KeyServer.String(k[0]), KeyStatus.String(k[1]))
	})

	var values []time.Duration
	for _, b := range upstreamBuckets {
		at := time.Duration(b * float64(time.Second))
		values = append(values, at-time.Nanosecond, at, at+time.Nanosecond)
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 500 {
		values = append(values, time.Duration(r.Int64N(int64(90*time.Second))))
	}
	ctx := t.Context()
	for i, v := range values {
		k := [2]string{[]string{"github", "jira"}[i%2], []string{StatusOK, "error", "timeout"}[i%3]}
		ours.record(ctx, k, v)
		sdkHist.Record(ctx, v.Seconds(), metric.WithAttributes(KeyServer.String(k[0]), KeyStatus.String(k[1])))
	}

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		t.Fatal(err)
	}
	want := rm.ScopeMetrics[0].Metrics[0].Data.(metricdata.Histogram[float64])
	var got metricdata.Metrics
	ours.report(time.Now(), &got, nil)
	metricdatatest.AssertAggregationsEqual(t, want, got.Data,
		metricdatatest.IgnoreTimestamp(), metricdatatest.IgnoreExemplars(), metricdatatest.IgnoreValue())
	byAttrs := func(h metricdata.Histogram[float64]) map[string]metricdata.HistogramDataPoint[float64] {
		m := map[string]metricdata.HistogramDataPoint[float64]{}
		for _, p := range h.DataPoints {
			m[setKey(p.Attributes)] = p
		}
		return m
	}
	gotPoints := byAttrs(got.Data.(metricdata.Histogram[float64]))
	for k, w := range byAttrs(want) {
		g := gotPoints[k]
		if g.Count != w.Count || !slices.Equal(g.BucketCounts, w.BucketCounts) || !slices.Equal(g.Bounds, w.Bounds) {
			t.Errorf("%s: count %d buckets %v over %v; the SDK: %d, %v over %v", k, g.Count, g.BucketCounts, g.Bounds,
				w.Count, w.BucketCounts, w.Bounds)
		}
		// The SDK sums float seconds, these integer nanoseconds.
		if d := g.Sum - w.Sum; d > 1e-6 || d < -1e-6 {
			t.Errorf("%s: sum %g, the SDK's %g", k, g.Sum, w.Sum)
		}
		for _, e := range []struct {
			name      string
			got, want metricdata.Extrema[float64]
		}{{"min", g.Min, w.Min}, {"max", g.Max, w.Max}} {
			gv, gok := e.got.Value()
			wv, wok := e.want.Value()
			if gok != wok || gv != wv {
				t.Errorf("%s: %s %v (%v), the SDK's %v (%v)", k, e.name, gv, gok, wv, wok)
			}
		}
	}
	if len(gotPoints) != 6 {
		t.Errorf("%d series, want 6", len(gotPoints))
	}
}

// Past maxSeries attribute sets, measurements go to one overflow series,
// as past the SDK's cardinality limit: none is lost, and memory stays
// bounded.
func TestDurationsOverflow(t *testing.T) {
	d := newDurations(decisionBuckets, func(k string) attribute.Set { return attribute.NewSet(KeyRole.String(k)) })
	for i := range maxSeries + 10 {
		d.record(t.Context(), fmt.Sprint("role", i), time.Millisecond)
	}
	d.record(t.Context(), "role0", time.Millisecond)
	var hist, count metricdata.Metrics
	d.report(time.Now(), &hist, &count)
	points := count.Data.(metricdata.Sum[int64]).DataPoints
	if len(points) != maxSeries+1 {
		t.Fatalf("%d series, want %d and the overflow", len(points), maxSeries)
	}
	var total int64
	for _, p := range points {
		total += p.Value
		if p.Attributes.Equals(&overflowSet) && p.Value != 10 {
			t.Errorf("overflow series counts %d, want 10", p.Value)
		}
	}
	if total != maxSeries+11 {
		t.Errorf("%d measurements counted, want %d", total, maxSeries+11)
	}
}

// Measurements and collections run concurrently: every collection's
// count is its buckets' total, counts never go backwards, and the last
// collection counts every measurement.
func TestDurationsConcurrent(t *testing.T) {
	d := newDurations(decisionBuckets, func(k string) attribute.Set { return attribute.NewSet(KeyRole.String(k)) })
	const workers, each = 4, 2000
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				d.record(t.Context(), fmt.Sprint("role", (w+i)%3), time.Duration(i)*time.Microsecond)
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	last := map[string]uint64{}
	for finished := false; !finished; {
		select {
		case <-done:
			finished = true
		default:
		}
		var hist metricdata.Metrics
		d.report(time.Now(), &hist, nil)
		if hist.Data == nil {
			continue
		}
		var total uint64
		for _, p := range hist.Data.(metricdata.Histogram[float64]).DataPoints {
			var sum uint64
			for _, c := range p.BucketCounts {
				sum += c
			}
			if sum != p.Count {
				t.Fatalf("count %d, buckets total %d", p.Count, sum)
			}
			k := setKey(p.Attributes)
			if p.Count < last[k] {
				t.Fatalf("%s went from %d to %d", k, last[k], p.Count)
			}
			last[k] = p.Count
			total += p.Count
		}
		if finished && total != workers*each {
			t.Fatalf("%d measurements counted, want %d", total, workers*each)
		}
	}
}
