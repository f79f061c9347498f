package main

import (
	"io"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// TestMetricsEndpoint sends known traffic through two sidecar processes and
// scrapes their --metrics endpoints as Prometheus would: the exposition
// parses, and has exact counts and histogram buckets per label set on both
// sides of the call.
func TestMetricsEndpoint(t *testing.T) {
	t.Parallel()
	_, natsURL := startServer(t)
	_, ratingsApp := startApp(t, "ratings")
	_, webApp := startApp(t, "web")
	calleeMetrics, callerMetrics := freeAddr(t), freeAddr(t)
	startSidecar(t, natsURL, "ratings", "ratings-1", ratingsApp, "--metrics", calleeMetrics, "--outlier-failures", "0")
	_, outbound := startSidecar(t, natsURL, "web", "web-1", webApp, "--metrics", callerMetrics, "--breaker", "off")
	c := &http.Client{Timeout: 10 * time.Second}

	get := func(host, uri string) *http.Response {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, "http://"+outbound+uri, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = host
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	for i := 0; i < 5; i++ {
		get("ratings", "/work")
	}
	for i := 0; i < 3; i++ {
		get("ratings", "/work?ms=250") // slower than the 0.2 s bucket
	}
	admin(t, c, ratingsApp+"/admin/fail?on=1")
	for i := 0; i < 2; i++ {
		get("ratings", "/work")
	}
	retries := 0
	for i := 0; i < 2; i++ {
		attempts, _ := strconv.Atoi(get("nobody", "/").Header.Get("Mesh-Attempts"))
		retries += attempts - 1
	}

	caller := scrapeMetrics(t, c, "http://"+callerMetrics+"/metrics")
	callee := scrapeMetrics(t, c, "http://"+calleeMetrics+"/metrics")
	wantCounts(t, "caller", caller, "natsmesh_requests_total", map[string]float64{
		"outbound web ratings 2xx ":             8,
		"outbound web ratings 5xx ":             2,
		"outbound web nobody 5xx no-responders": 2,
	})
	wantCounts(t, "callee", callee, "natsmesh_requests_total", map[string]float64{
		"inbound web ratings 2xx ": 8,
		"inbound web ratings 5xx ": 2,
	})
	for _, m := range caller["natsmesh_request_retries_total"].GetMetric() {
		l := labelMap(m)
		want := 0.0
		if l["callee"] == "nobody" {
			want = float64(retries)
		}
		if m.GetCounter().GetValue() != want {
			t.Errorf("caller: retries to %s = %g, want %g (from Mesh-Attempts)", l["callee"], m.GetCounter().GetValue(), want)
		}
	}
	// The callee's histogram of its 10 calls: the 3 slow ones above 0.2 s,
	// the 7 others well below 0.1 s.
	for name, fams := range map[string]map[string]*dto.MetricFamily{"caller": caller, "callee": callee} {
		var h *dto.Histogram
		for _, m := range fams["natsmesh_request_duration_seconds"].GetMetric() {
			if labelMap(m)["callee"] == "ratings" {
				h = m.GetHistogram()
			}
		}
		if h == nil || h.GetSampleCount() != 10 || h.GetSampleSum() < 0.75 {
			t.Fatalf("%s: histogram to ratings %v, want 10 calls taking at least 0.75 s in all", name, h)
		}
		for _, b := range h.GetBucket() {
			ub, n := b.GetUpperBound(), b.GetCumulativeCount()
			switch {
			case ub < 0.1 && n > 7:
				t.Errorf("%s: bucket le=%g has %d calls, more than the 7 fast ones", name, ub, n)
			case ub >= 0.1 && ub <= 0.2 && n != 7:
				t.Errorf("%s: bucket le=%g has %d calls, want the 7 fast ones", name, ub, n)
			case ub > 0.2 && (n < 7 || n > 10):
				t.Errorf("%s: bucket le=%g has %d calls, want 7 to 10", name, ub, n)
			}
		}
		if inf := h.GetBucket()[len(h.GetBucket())-1]; !math.IsInf(inf.GetUpperBound(), 1) || inf.GetCumulativeCount() != 10 {
			t.Errorf("%s: last bucket le=%g has %d, want +Inf with all 10", name, inf.GetUpperBound(), inf.GetCumulativeCount())
		}
	}
	for _, m := range callee["natsmesh_instance_state"].GetMetric() {
		if l := labelMap(m); (l["state"] == "serving") != (m.GetGauge().GetValue() == 1) {
			t.Errorf("callee: instance_state{state=%q} = %g, want 1 for serving only", l["state"], m.GetGauge().GetValue())
		}
	}

	// A scraper asking for OpenMetrics gets it.
	req, _ := http.NewRequest(http.MethodGet, "http://"+callerMetrics+"/metrics", nil)
	req.Header.Set("Accept", "application/openmetrics-text;version=1.0.0")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/openmetrics-text") || !strings.HasSuffix(string(body), "# EOF\n") {
		t.Errorf("OpenMetrics asked, got %q ending %q", resp.Header.Get("Content-Type"), body[max(0, len(body)-20):])
	}
}

// TestMetricsFlags: a taken --metrics port is one clear sentence naming the
// flag, and --metrics with metrics off is refused.
func TestMetricsFlags(t *testing.T) {
	t.Parallel()
	_, stderr, code := natsmesh(t, "sidecar", "--service", "a", "--upstream", "http://127.0.0.1:1", "--metrics", "127.0.0.1:1", "--stats-interval", "0")
	if code != 2 || !strings.Contains(stderr, "--metrics needs metrics recorded") {
		t.Errorf("--metrics with --stats-interval 0: exit %d, %s", code, stderr)
	}
	_, stderr, code = natsmesh(t, "gateway", "--route", "/=a", "--stats-interval", "-1s")
	if code != 2 || !strings.Contains(stderr, "--stats-interval -1s") {
		t.Errorf("--stats-interval -1s: exit %d, %s", code, stderr)
	}
	// An address that is not host:port is a usage error, before anything
	// starts, and is not blamed on another program.
	for _, args := range [][]string{
		{"sidecar", "--service", "a", "--upstream", "http://127.0.0.1:1"},
		{"gateway", "--route", "/=a"},
		{"server", "--listen", "127.0.0.1:0", "--data", t.TempDir()},
	} {
		_, stderr, code := natsmesh(t, append(args, "--metrics", "15090")...)
		if code != 2 || !strings.Contains(stderr, "--metrics 15090") || strings.Contains(stderr, "another program") {
			t.Errorf("%s --metrics 15090: exit %d, %s", args[0], code, stderr)
		}
	}
	// A port another program holds is named as such, with the flag.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, stderr, code = natsmesh(t, "server", "--listen", "127.0.0.1:0", "--data", t.TempDir(), "--metrics", ln.Addr().String())
	if code == 0 || !strings.Contains(stderr, "another program") || !strings.Contains(stderr, "--metrics") {
		t.Errorf("server --metrics on a taken port: exit %d, %s", code, stderr)
	}
}

func admin(t *testing.T, c *http.Client, url string) {
	t.Helper()
	resp, err := c.Post(url, "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
}

// scrapeMetrics gets a /metrics page and parses it with Prometheus's own
// text parser.
func scrapeMetrics(t *testing.T, c *http.Client, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("GET %s: %s, %s", url, resp.Status, resp.Header.Get("Content-Type"))
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: the exposition does not parse: %v", url, err)
	}
	return fams
}

func labelMap(m *dto.Metric) map[string]string {
	l := map[string]string{}
	for _, p := range m.GetLabel() {
		l[p.GetName()] = p.GetValue()
	}
	return l
}

// wantCounts checks a requests_total family series by series, keyed by
// "direction caller callee status_class error_type".
func wantCounts(t *testing.T, who string, fams map[string]*dto.MetricFamily, name string, want map[string]float64) {
	t.Helper()
	got := map[string]float64{}
	for _, m := range fams[name].GetMetric() {
		l := labelMap(m)
		got[strings.Join([]string{l["direction"], l["caller"], l["callee"], l["status_class"], l["error_type"]}, " ")] = m.GetCounter().GetValue()
	}
	if len(got) != len(want) {
		t.Errorf("%s: %s has series %v, want %v", who, name, got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %s{%s} = %g, want %g", who, name, k, got[k], v)
		}
	}
}
