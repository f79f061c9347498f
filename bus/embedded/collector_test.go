package embedded_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"

	"github.com/natsmesh/natsmesh/bus/embedded"
	"github.com/natsmesh/natsmesh/internal/meshtest"
)

func natsGather(t *testing.T, c prometheus.Collector) map[string]*dto.MetricFamily {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(c); err != nil {
		t.Fatal(err)
	}
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]*dto.MetricFamily, len(fams))
	for _, f := range fams {
		out[f.GetName()] = f
	}
	return out
}

func natsValue(t *testing.T, fams map[string]*dto.MetricFamily, name string) float64 {
	t.Helper()
	f := fams[name]
	if f == nil || len(f.Metric) != 1 {
		t.Fatalf("%s: %v, want one series", name, f)
	}
	m := f.Metric[0]
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	}
	t.Fatalf("%s is neither a counter nor a gauge", name)
	return 0
}

func TestNATSCollector(t *testing.T) {
	srv := meshtest.RunServer(t)
	c := embedded.NewNATSCollector(srv.NATS())
	before := natsGather(t, c)
	var fams []*dto.MetricFamily
	for _, f := range before {
		fams = append(fams, f)
	}
	if problems, err := promlint.NewWithMetricFamilies(fams).Lint(); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}

	nc := meshtest.Connect(t, srv)
	sub, err := nc.SubscribeSync("natsmesh.test")
	if err != nil {
		t.Fatal(err)
	}
	const msgs, size = 10, 100
	for range msgs {
		if err := nc.Publish("natsmesh.test", make([]byte, size)); err != nil {
			t.Fatal(err)
		}
	}
	for range msgs {
		if _, err := sub.NextMsg(5 * time.Second); err != nil {
			t.Fatal(err)
		}
	}
	after := natsGather(t, c)
	for _, tc := range []struct {
		name     string
		min, max float64 // of the change
	}{
		{"natsmesh_nats_connections", 1, 1},
		{"natsmesh_nats_connections_total", 1, 1},
		{"natsmesh_nats_subscriptions", 1, 10}, // the client's inbox too
		{"natsmesh_nats_received_messages_total", msgs, msgs + 10},
		{"natsmesh_nats_sent_messages_total", msgs, msgs + 10},
		{"natsmesh_nats_received_bytes_total", msgs * size, msgs*size + 1000},
		{"natsmesh_nats_sent_bytes_total", msgs * size, msgs*size + 1000},
		{"natsmesh_nats_slow_consumers_total", 0, 0},
	} {
		d := natsValue(t, after, tc.name) - natsValue(t, before, tc.name)
		if d < tc.min || d > tc.max {
			t.Errorf("%s went up by %g, want %g to %g", tc.name, d, tc.min, tc.max)
		}
	}
	for name, want := range map[string]float64{"natsmesh_nats_up": 1, "natsmesh_nats_jetstream_enabled": 1, "natsmesh_nats_info": 1} {
		if got := natsValue(t, after, name); got != want {
			t.Errorf("%s = %g, want %g", name, got, want)
		}
	}
	if natsValue(t, after, "natsmesh_nats_memory_bytes") <= 0 {
		t.Error("natsmesh_nats_memory_bytes is not positive")
	}
	if natsValue(t, after, "natsmesh_nats_jetstream_api_requests_total") < 0 {
		t.Error("no JetStream API figures")
	}
	for name, f := range after {
		counter := f.GetType() == dto.MetricType_COUNTER
		if counter != strings.HasSuffix(name, "_total") {
			t.Errorf("%s is a %s: only counters end in _total", name, f.GetType())
		}
	}
}

type failingVarz struct{}

func (failingVarz) Varz(*server.VarzOptions) (*server.Varz, error) {
	return nil, errors.New("no")
}

func TestNATSCollectorDown(t *testing.T) {
	fams := natsGather(t, embedded.NewNATSCollector(failingVarz{}))
	if got := natsValue(t, fams, "natsmesh_nats_up"); got != 0 || len(fams) != 1 {
		t.Errorf("up = %g with %d families, want only up = 0", got, len(fams))
	}
}
