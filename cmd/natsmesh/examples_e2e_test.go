//go:build unix

package main

import (
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// buildExample builds ./examples/<name> into the test's temp dir.
func buildExample(t *testing.T, name string) string {
	t.Helper()
	goCmd, err := goTool()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), name)
	cmd := exec.Command(goCmd, "build", "-o", bin, "../../examples/"+name)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build example %s: %v\n%s", name, err, out)
	}
	return bin
}

// The library examples: a Go service that announces itself with no sidecar,
// and a Go program that mirrors the registry's events.
func TestRegistryExamples(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the examples; skipped with -short")
	}
	t.Parallel()
	_, natsURL := startServer(t)
	env := []string{"NATSMESH_URL=" + natsURL}
	watch := start(t, "example watch", env, buildExample(t, "watch"), "hello-go")
	watch.waitOutput(t, regexp.MustCompile(`(snapshot): 0 instances`), startTimeout)

	metricsAddr := freeAddr(t)
	announce := start(t, "example announce", append(env, "METRICS_ADDR="+metricsAddr), buildExample(t, "announce"))
	inst := announce.waitOutput(t, regexp.MustCompile(`as instance (hello-go-[0-9a-f]+)`), startTimeout)
	watch.waitOutput(t, regexp.MustCompile(`(up hello-go `+inst+` \(registered\))`), startTimeout)

	out, errOut, code := natsmesh(t, "call", "hello-go", "/", "--nats", natsURL)
	if code != 0 || !strings.Contains(out, "hello from Go") {
		t.Fatalf("call hello-go: exit %d, %q %q", code, out, errOut)
	}

	// The library records metrics when given a Set: the call is counted.
	fams := scrapeMetrics(t, http.DefaultClient, "http://"+metricsAddr+"/metrics")
	var served float64
	for _, m := range fams["natsmesh_requests_total"].GetMetric() {
		if l := labelMap(m); l["direction"] == "inbound" && l["callee"] == "hello-go" && l["status_class"] == "2xx" {
			served += m.GetCounter().GetValue()
		}
	}
	if served != 1 {
		t.Errorf("announce's metrics count %g calls served, want the 1 made", served)
	}

	announce.signal(t, os.Interrupt)
	if code := announce.wait(t, startTimeout); code != 0 {
		t.Fatalf("announce exited %d", code)
	}
	watch.waitOutput(t, regexp.MustCompile(`(down hello-go `+inst+` \(deregistered\))`), startTimeout)
}

// The smallest library program serves a service and calls it by name, with
// no sidecar; it links neither nats-server nor the Prometheus client
// (internal/shape checks that).
func TestLibraryExample(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the example; skipped with -short")
	}
	t.Parallel()
	_, natsURL := startServer(t)
	lib := start(t, "example library", []string{"NATSMESH_URL=" + natsURL}, buildExample(t, "library"))
	if code := lib.wait(t, startTimeout); code != 0 {
		t.Fatalf("example library exited %d", code)
	}
	if out := lib.stdout.String(); out != "200 OK hello library, from hello-library\n" {
		t.Errorf("example library printed %q, want hello-library's answer to caller library", out)
	}
}
