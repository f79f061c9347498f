package telemetry_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	collectortracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/natsmesh/natsmesh/internal/meshtest"
	"github.com/natsmesh/natsmesh/telemetry"
)

// wait bounds every wait for an export in these tests.
const wait = 5 * time.Second

// envMap is a Config.Getenv over a fixed set of variables.
func envMap(env map[string]string) func(string) string {
	return func(k string) string { return env[k] }
}

// setup calls telemetry.Setup and shuts the result down when the test ends.
func setup(t *testing.T, cfg telemetry.Config) *telemetry.Tracing {
	t.Helper()
	tr, err := telemetry.Setup(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Setup: %v", err)
	}
	t.Cleanup(func() {
		if err := tr.Shutdown(context.Background()); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return tr
}

// sampleAll makes the SDK, which reads the process environment, record
// every span whatever the machine's environment says.
func sampleAll(t *testing.T) {
	t.Helper()
	t.Setenv("OTEL_TRACES_SAMPLER", "always_on")
	t.Setenv("OTEL_TRACES_SAMPLER_ARG", "")
}

// endSpan starts and ends one span named name.
func endSpan(t *testing.T, tr *telemetry.Tracing, name string) {
	t.Helper()
	_, span := tr.TracerProvider().Tracer("telemetry_test").Start(context.Background(), name)
	if !span.IsRecording() {
		t.Fatalf("span %q is not recording with exporter %s", name, tr.Exporter())
	}
	span.End()
}

// shutdown flushes tr within the test's time bound.
func shutdown(t *testing.T, tr *telemetry.Tracing) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := tr.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

func TestSetupFromEnv(t *testing.T) {
	const unknown = `telemetry: OTEL_TRACES_EXPORTER="zipkin" is not supported; ` +
		`accepted values are "none", "otlp", "console", or a comma-separated list of "otlp" and "console"`
	tests := []struct {
		name     string
		env      map[string]string
		enabled  bool
		exporter string
		err      string // the whole message when set
		errHas   string // a part of the message when set
	}{
		{name: "unset", env: nil, exporter: "none"},
		{name: "empty", env: map[string]string{"OTEL_TRACES_EXPORTER": ""}, exporter: "none"},
		{name: "none", env: map[string]string{"OTEL_TRACES_EXPORTER": "none"}, exporter: "none"},
		{name: "none upper case", env: map[string]string{"OTEL_TRACES_EXPORTER": " NONE "}, exporter: "none"},
		{name: "console", env: map[string]string{"OTEL_TRACES_EXPORTER": "console"}, enabled: true, exporter: "console"},
		{name: "otlp defaults to http", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp"}, enabled: true, exporter: "otlp/http"},
		{name: "otlp upper case", env: map[string]string{"OTEL_TRACES_EXPORTER": "OTLP"}, enabled: true, exporter: "otlp/http"},
		{
			name:    "otlp http/protobuf",
			env:     map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
			enabled: true, exporter: "otlp/http",
		},
		{
			name:    "otlp grpc",
			env:     map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
			enabled: true, exporter: "otlp/grpc",
		},
		{
			name: "traces protocol wins",
			env: map[string]string{
				"OTEL_TRACES_EXPORTER":               "otlp",
				"OTEL_EXPORTER_OTLP_PROTOCOL":        "http/protobuf",
				"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
			},
			enabled: true, exporter: "otlp/grpc",
		},
		{
			name:    "list",
			env:     map[string]string{"OTEL_TRACES_EXPORTER": "otlp, console"},
			enabled: true, exporter: "otlp/http,console",
		},
		{
			name:    "list with repeats",
			env:     map[string]string{"OTEL_TRACES_EXPORTER": "console,otlp,console"},
			enabled: true, exporter: "console,otlp/http",
		},
		{name: "unknown", env: map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}, err: unknown},
		{
			name:   "unknown in a list",
			env:    map[string]string{"OTEL_TRACES_EXPORTER": "otlp,jaeger"},
			errHas: `OTEL_TRACES_EXPORTER="otlp,jaeger" is not supported`,
		},
		{
			name:   "none in a list",
			env:    map[string]string{"OTEL_TRACES_EXPORTER": "none,console"},
			errHas: `OTEL_TRACES_EXPORTER="none,console" is not supported`,
		},
		{
			name:   "empty list item",
			env:    map[string]string{"OTEL_TRACES_EXPORTER": "console,"},
			errHas: `OTEL_TRACES_EXPORTER="console," is not supported`,
		},
		{
			name:    "otlp http/json",
			env:     map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "HTTP/JSON"},
			enabled: true, exporter: "otlp/http/json",
		},
		{
			name: "unknown traces protocol",
			env:  map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "thrift"},
			err: `telemetry: OTEL_EXPORTER_OTLP_TRACES_PROTOCOL="thrift" is not supported; ` +
				`accepted values are "http/protobuf", "grpc" and "http/json"`,
		},
		{
			name:     "protocol unused without otlp",
			env:      map[string]string{"OTEL_TRACES_EXPORTER": "console", "OTEL_EXPORTER_OTLP_PROTOCOL": "thrift"},
			enabled:  true,
			exporter: "console",
		},
		{
			name:     "sdk disabled",
			env:      map[string]string{"OTEL_SDK_DISABLED": "TRUE", "OTEL_TRACES_EXPORTER": "console"},
			exporter: "none",
		},
		{
			name:     "sdk disabled ignores a bad exporter",
			env:      map[string]string{"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "zipkin"},
			exporter: "none",
		},
		{
			name:    "sdk not disabled",
			env:     map[string]string{"OTEL_SDK_DISABLED": "false", "OTEL_TRACES_EXPORTER": "console"},
			enabled: true, exporter: "console",
		},
		{
			name: "sdk disabled not a boolean",
			env:  map[string]string{"OTEL_SDK_DISABLED": "1", "OTEL_TRACES_EXPORTER": "console"},
			err:  `telemetry: OTEL_SDK_DISABLED="1" is not supported; accepted values are "true", "false" and empty`,
		},
		{
			name: "malformed resource attributes",
			env: map[string]string{
				"OTEL_TRACES_EXPORTER":     "console",
				"OTEL_RESOURCE_ATTRIBUTES": "team=mesh,broken",
			},
			err: `telemetry: OTEL_RESOURCE_ATTRIBUTES="team=mesh,broken" is not supported; ` +
				`want comma-separated key=value pairs with percent-encoded values`,
		},
		{
			name: "bad percent-encoding in resource attributes",
			env: map[string]string{
				"OTEL_TRACES_EXPORTER":     "console",
				"OTEL_RESOURCE_ATTRIBUTES": "team=100%",
			},
			errHas: `OTEL_RESOURCE_ATTRIBUTES="team=100%" is not supported`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr, err := telemetry.Setup(context.Background(), telemetry.Config{
				Service: "natsmesh-test",
				Stderr:  io.Discard,
				Getenv:  envMap(tc.env),
			})
			if tc.err != "" || tc.errHas != "" {
				if err == nil {
					t.Fatalf("Setup: no error, exporter %s", tr.Exporter())
				}
				if tc.err != "" && err.Error() != tc.err {
					t.Fatalf("Setup error:\n got %s\nwant %s", err, tc.err)
				}
				if !strings.Contains(err.Error(), tc.errHas) {
					t.Fatalf("Setup error %q does not contain %q", err, tc.errHas)
				}
				var envErr *telemetry.EnvError
				if !errors.As(err, &envErr) {
					t.Fatalf("Setup error %T is not an *EnvError", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Setup: %v", err)
			}
			defer func() {
				if err := tr.Shutdown(context.Background()); err != nil {
					t.Errorf("Shutdown: %v", err)
				}
			}()
			if got := tr.Enabled(); got != tc.enabled {
				t.Errorf("Enabled() = %v, want %v", got, tc.enabled)
			}
			if got := tr.Exporter(); got != tc.exporter {
				t.Errorf("Exporter() = %q, want %q", got, tc.exporter)
			}
			if tr.TracerProvider() == nil {
				t.Fatal("TracerProvider() is nil")
			}
			if !tc.enabled {
				_, span := tr.TracerProvider().Tracer("t").Start(context.Background(), "s")
				if span.IsRecording() || span.SpanContext().IsValid() {
					t.Errorf("disabled provider made a live span: recording %v, context %v",
						span.IsRecording(), span.SpanContext())
				}
				span.End()
			}
		})
	}
}

func TestShutdownTwice(t *testing.T) {
	for _, exporter := range []string{"none", "console"} {
		t.Run(exporter, func(t *testing.T) {
			tr, err := telemetry.Setup(context.Background(), telemetry.Config{
				Stderr: io.Discard,
				Getenv: envMap(map[string]string{"OTEL_TRACES_EXPORTER": exporter}),
			})
			if err != nil {
				t.Fatalf("Setup: %v", err)
			}
			for i := range 2 {
				if err := tr.Shutdown(context.Background()); err != nil {
					t.Fatalf("Shutdown #%d: %v", i+1, err)
				}
			}
		})
	}
}

// consoleSpan is the part of the console exporter's JSON these tests read.
type consoleSpan struct {
	Name     string
	Resource []struct {
		Key   string
		Value struct{ Value any }
	}
}

// consoleSpans decodes the console exporter's output, one JSON object per
// span.
func consoleSpans(t *testing.T, out []byte) []consoleSpan {
	t.Helper()
	var spans []consoleSpan
	dec := json.NewDecoder(bytes.NewReader(out))
	for dec.More() {
		var s consoleSpan
		if err := dec.Decode(&s); err != nil {
			t.Fatalf("console output is not JSON spans: %v\n%s", err, out)
		}
		spans = append(spans, s)
	}
	return spans
}

// resourceAttrs flattens a console span's resource.
func (s consoleSpan) resourceAttrs() map[string]any {
	m := make(map[string]any, len(s.Resource))
	for _, kv := range s.Resource {
		m[kv.Key] = kv.Value.Value
	}
	return m
}

func TestConsoleExporter(t *testing.T) {
	sampleAll(t)
	var out meshtest.LogBuffer
	tr := setup(t, telemetry.Config{
		Service: "natsmesh-sidecar",
		Stderr:  &out,
		Getenv:  envMap(map[string]string{"OTEL_TRACES_EXPORTER": "console"}),
	})
	endSpan(t, tr, "console-span")
	shutdown(t, tr)

	spans := consoleSpans(t, out.Bytes())
	if len(spans) != 1 || spans[0].Name != "console-span" {
		t.Fatalf("console wrote %d spans, want one named console-span:\n%s", len(spans), out.Bytes())
	}
	if got := spans[0].resourceAttrs()["service.name"]; got != "natsmesh-sidecar" {
		t.Errorf("service.name = %v, want natsmesh-sidecar", got)
	}
}

func TestResource(t *testing.T) {
	tests := []struct {
		name string
		cfg  telemetry.Config
		env  map[string]string
		want map[string]any // nil value: the key must be absent
	}{
		{
			name: "config",
			cfg:  telemetry.Config{Service: "natsmesh-server", Instance: "server-1"},
			want: map[string]any{
				"service.name":           "natsmesh-server",
				"service.instance.id":    "server-1",
				"telemetry.sdk.language": "go",
				"telemetry.sdk.name":     "opentelemetry",
			},
		},
		{
			name: "no service",
			cfg:  telemetry.Config{},
			want: map[string]any{"service.name": "unknown_service:telemetry.test", "service.instance.id": nil},
		},
		{
			name: "resource attributes override config",
			cfg:  telemetry.Config{Service: "natsmesh-server", Instance: "server-1"},
			env: map[string]string{
				"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attrs, service.instance.id = pod-7 ,team=mesh%20core",
			},
			want: map[string]any{
				"service.name":        "from-attrs",
				"service.instance.id": "pod-7",
				"team":                "mesh core",
			},
		},
		{
			name: "service name overrides both",
			cfg:  telemetry.Config{Service: "natsmesh-server"},
			env: map[string]string{
				"OTEL_SERVICE_NAME":        "from-env",
				"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attrs",
			},
			want: map[string]any{"service.name": "from-env"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sampleAll(t)
			env := map[string]string{"OTEL_TRACES_EXPORTER": "console"}
			for k, v := range tc.env {
				env[k] = v
			}
			var out meshtest.LogBuffer
			cfg := tc.cfg
			cfg.Stderr, cfg.Getenv = &out, envMap(env)
			tr := setup(t, cfg)
			endSpan(t, tr, "resource-span")
			shutdown(t, tr)

			spans := consoleSpans(t, out.Bytes())
			if len(spans) != 1 {
				t.Fatalf("console wrote %d spans, want 1:\n%s", len(spans), out.Bytes())
			}
			got := spans[0].resourceAttrs()
			for k, want := range tc.want {
				v, ok := got[k]
				switch {
				case want == nil && ok:
					t.Errorf("resource has %s = %v, want none", k, v)
				case want != nil && v != want:
					t.Errorf("resource %s = %v, want %v", k, v, want)
				}
			}
		})
	}
}

// otlpEnv points the OTLP exporters, which read the process environment,
// at endpoint, and clears the variables that would override it.
func otlpEnv(t *testing.T, exporter, protocol, endpoint string) {
	t.Helper()
	sampleAll(t)
	for k, v := range map[string]string{
		"OTEL_SDK_DISABLED":                     "",
		"OTEL_TRACES_EXPORTER":                  exporter,
		"OTEL_EXPORTER_OTLP_PROTOCOL":           protocol,
		"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL":    "",
		"OTEL_EXPORTER_OTLP_ENDPOINT":           endpoint,
		"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT":    "",
		"OTEL_EXPORTER_OTLP_INSECURE":           "true",
		"OTEL_EXPORTER_OTLP_TRACES_INSECURE":    "",
		"OTEL_EXPORTER_OTLP_HEADERS":            "",
		"OTEL_EXPORTER_OTLP_TRACES_HEADERS":     "",
		"OTEL_EXPORTER_OTLP_COMPRESSION":        "",
		"OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "",
		"OTEL_RESOURCE_ATTRIBUTES":              "",
		"OTEL_SERVICE_NAME":                     "",
	} {
		t.Setenv(k, v)
	}
}

// export is what a collector received in one request.
type export struct {
	contentType string   // for OTLP/HTTP
	spans       []string // span names, in order
}

// protoSpanNames lists the spans in an OTLP export request.
func protoSpanNames(req *collectortracepb.ExportTraceServiceRequest) []string {
	var names []string
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				names = append(names, s.GetName())
			}
		}
	}
	return names
}

// jsonSpanNames lists the spans in an OTLP/JSON export request.
func jsonSpanNames(body []byte) ([]string, error) {
	var req struct {
		ResourceSpans []struct {
			ScopeSpans []struct {
				Spans []struct{ Name string }
			}
		}
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, err
	}
	var names []string
	for _, rs := range req.ResourceSpans {
		for _, ss := range rs.ScopeSpans {
			for _, s := range ss.Spans {
				names = append(names, s.Name)
			}
		}
	}
	return names, nil
}

// received waits for one export carrying one span named name, and returns
// it.
func received(t *testing.T, got <-chan export, name string) export {
	t.Helper()
	select {
	case e := <-got:
		if len(e.spans) != 1 || e.spans[0] != name {
			t.Fatalf("collector got spans %q, want [%s]", e.spans, name)
		}
		return e
	case <-time.After(wait):
		t.Fatalf("collector got no span within %v", wait)
		return export{}
	}
}

// httpCollector is an OTLP/HTTP collector on a loopback port, taking
// protobuf and JSON.
func httpCollector(t *testing.T) (string, <-chan export) {
	t.Helper()
	got := make(chan export, 10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/v1/traces" {
			t.Errorf("collector got %s %s, want POST /v1/traces", r.Method, r.URL.Path)
			http.NotFound(w, r)
			return
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("reading export: %v", err)
			return
		}
		e := export{contentType: r.Header.Get("Content-Type")}
		var resp []byte
		switch e.contentType {
		case "application/x-protobuf":
			req := new(collectortracepb.ExportTraceServiceRequest)
			err = proto.Unmarshal(body, req)
			e.spans = protoSpanNames(req)
			resp, _ = proto.Marshal(&collectortracepb.ExportTraceServiceResponse{})
		case "application/json":
			e.spans, err = jsonSpanNames(body)
			resp = []byte("{}")
		default:
			err = errors.New("unknown content type")
		}
		if err != nil {
			t.Errorf("decoding %s export: %v", e.contentType, err)
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		got <- e
		w.Header().Set("Content-Type", e.contentType)
		_, _ = w.Write(resp)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, got
}

func TestOTLPHTTP(t *testing.T) {
	tests := []struct {
		name        string
		protocol    string
		exporter    string
		contentType string
	}{
		{name: "protobuf", protocol: "http/protobuf", exporter: "otlp/http", contentType: "application/x-protobuf"},
		{name: "default", protocol: "", exporter: "otlp/http", contentType: "application/x-protobuf"},
		{name: "json", protocol: "http/json", exporter: "otlp/http/json", contentType: "application/json"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			endpoint, got := httpCollector(t)
			otlpEnv(t, "otlp", tc.protocol, endpoint)
			tr := setup(t, telemetry.Config{Service: "natsmesh-gateway"})
			if tr.Exporter() != tc.exporter {
				t.Fatalf("Exporter() = %q, want %s", tr.Exporter(), tc.exporter)
			}
			endSpan(t, tr, "http-span")
			shutdown(t, tr)
			if e := received(t, got, "http-span"); e.contentType != tc.contentType {
				t.Errorf("Content-Type = %q, want %s", e.contentType, tc.contentType)
			}
		})
	}
}

func TestOTLPProtocolFromGetenv(t *testing.T) {
	// The process environment asks for JSON; Setup follows Config.Getenv.
	endpoint, got := httpCollector(t)
	otlpEnv(t, "otlp", "http/json", endpoint)
	getenv := envMap(map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"})
	tr := setup(t, telemetry.Config{Getenv: getenv})
	endSpan(t, tr, "getenv-span")
	shutdown(t, tr)
	if e := received(t, got, "getenv-span"); e.contentType != "application/x-protobuf" {
		t.Errorf("Content-Type = %q, want application/x-protobuf", e.contentType)
	}
}

// grpcCollector implements the OTLP collector's TraceService.
type grpcCollector struct {
	collectortracepb.UnimplementedTraceServiceServer
	got chan export
}

func (c *grpcCollector) Export(_ context.Context, req *collectortracepb.ExportTraceServiceRequest) (*collectortracepb.ExportTraceServiceResponse, error) {
	c.got <- export{spans: protoSpanNames(req)}
	return &collectortracepb.ExportTraceServiceResponse{}, nil
}

func TestOTLPGRPC(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	collector := &grpcCollector{got: make(chan export, 10)}
	srv := grpc.NewServer()
	collectortracepb.RegisterTraceServiceServer(srv, collector)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	t.Cleanup(func() {
		srv.Stop()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})

	otlpEnv(t, "otlp", "grpc", "http://"+lis.Addr().String())
	tr := setup(t, telemetry.Config{Service: "natsmesh-server"})
	if tr.Exporter() != "otlp/grpc" {
		t.Fatalf("Exporter() = %q, want otlp/grpc", tr.Exporter())
	}
	endSpan(t, tr, "grpc-span")
	shutdown(t, tr)
	received(t, collector.got, "grpc-span")
}

func TestOTLPAndConsole(t *testing.T) {
	endpoint, got := httpCollector(t)
	otlpEnv(t, "otlp,console", "", endpoint)
	var out meshtest.LogBuffer
	tr := setup(t, telemetry.Config{Service: "natsmesh-sidecar", Stderr: &out})
	if tr.Exporter() != "otlp/http,console" {
		t.Fatalf("Exporter() = %q, want otlp/http,console", tr.Exporter())
	}
	endSpan(t, tr, "both-span")
	shutdown(t, tr)
	received(t, got, "both-span")
	if spans := consoleSpans(t, out.Bytes()); len(spans) != 1 || spans[0].Name != "both-span" {
		t.Fatalf("console wrote %d spans, want one named both-span:\n%s", len(spans), out.Bytes())
	}
}

func TestPropagator(t *testing.T) {
	sampleAll(t)
	tr := setup(t, telemetry.Config{
		Stderr: io.Discard,
		Getenv: envMap(map[string]string{"OTEL_TRACES_EXPORTER": "console"}),
	})
	member, err := baggage.NewMember("tenant", "acme")
	if err != nil {
		t.Fatal(err)
	}
	bag, err := baggage.New(member)
	if err != nil {
		t.Fatal(err)
	}
	ctx := baggage.ContextWithBaggage(context.Background(), bag)
	ctx, span := tr.TracerProvider().Tracer("t").Start(ctx, "client")
	defer span.End()

	header := http.Header{}
	telemetry.Propagator().Inject(ctx, propagation.HeaderCarrier(header))
	if header.Get("Traceparent") == "" || header.Get("Baggage") != "tenant=acme" {
		t.Fatalf("injected headers %v, want traceparent and baggage tenant=acme", header)
	}
	got := telemetry.Propagator().Extract(context.Background(), propagation.HeaderCarrier(header))
	if sc := trace.SpanContextFromContext(got); sc.TraceID() != span.SpanContext().TraceID() || !sc.IsRemote() {
		t.Errorf("extracted span context %v, want remote trace %s", sc, span.SpanContext().TraceID())
	}
	if v := baggage.FromContext(got).Member("tenant").Value(); v != "acme" {
		t.Errorf("extracted baggage tenant = %q, want acme", v)
	}
}
