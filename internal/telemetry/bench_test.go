package telemetry

import (
	"context"
	"testing"
	"time"
)

// BenchmarkRecordDecision is the metrics of one decision as the gateway
// records them without an OTLP endpoint: Prometheus only.
func BenchmarkRecordDecision(b *testing.B) {
	tel, err := New(context.Background(), &Options{ServiceName: "amg"})
	if err != nil {
		b.Fatal(err)
	}
	defer tel.Shutdown(context.Background())
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		tel.RecordDecision(ctx, "analyst", "allow", "enforce", "ok", 20*time.Microsecond)
	}
}
