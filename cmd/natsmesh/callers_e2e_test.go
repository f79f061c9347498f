//go:build unix

package main

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/internal/meshtest"
	"github.com/natsmesh/natsmesh/metrics"
)

// callersGet calls service through a sidecar's outbound listener in Host
// form and returns the status, the Mesh-Error code and the body.
func callersGet(c *http.Client, outbound, service string) (status int, code, body string, err error) {
	req, err := http.NewRequest(http.MethodGet, "http://"+outbound+"/work", nil)
	if err != nil {
		return 0, "", "", err
	}
	req.Host = service
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Mesh-Error"), string(b), err
}

// appCount asks an app started by startApp how many /work requests reached
// it.
func appCount(t *testing.T, c *http.Client, appURL string) string {
	t.Helper()
	resp, err := c.Get(appURL + "/admin/count")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// natsmesh apply of a callers list, as a user runs it against separate
// processes: apply warns about a name no running service has, the callee's
// sidecar refuses the caller the list leaves out with 403 forbidden and the
// sentence (its app never sees the call), natsmesh top counts the refusals
// by their code, and a corrected list lets the caller in again, all without
// restarting anything.
func TestEndToEndCallers(t *testing.T) {
	t.Parallel()
	_, natsURL := startServer(t)
	stats := []string{"--stats-interval", "200ms"}
	_, reviewsApp := startApp(t, "reviews")
	startSidecar(t, natsURL, "reviews", "reviews-1", reviewsApp, stats...)
	_, ppApp := startApp(t, "productpage")
	_, ppOut := startSidecar(t, natsURL, "productpage", "productpage-1", ppApp, stats...)
	_, ratingsApp := startApp(t, "ratings")
	_, ratingsOut := startSidecar(t, natsURL, "ratings", "ratings-1", ratingsApp, stats...)
	hc := &http.Client{Timeout: 10 * time.Second}
	t.Cleanup(hc.CloseIdleConnections)
	for _, svc := range []string{"reviews", "productpage", "ratings"} {
		meshtest.CheckFor(t, 15*time.Second, 20*time.Millisecond, func() error {
			insts, err := instancesOf(t, natsURL, svc)
			if err != nil || len(insts) != 1 {
				return fmt.Errorf("registry lists %d instances of %s (%v); want 1", len(insts), svc, err)
			}
			return nil
		})
	}
	if status, code, body, err := callersGet(hc, ratingsOut, "reviews"); err != nil || status != http.StatusOK {
		t.Fatalf("before any list: ratings got %d %s %q (%v)", status, code, body, err)
	}

	// A list with a typo: apply warns about it, and applies it.
	file := configFile(t, "callers.yaml", "service: reviews\ncallers: [productpage, ratngs]\n")
	out, errOut := mustRun(t, "apply", "-f", file, "--nats", natsURL)
	rev := revisionIn(t, `(?m)^reviews: applied revision (\d+)$`, out)
	wantWarn := "warning: reviews: callers[1] names ratngs, which no running instance serves, so no call comes from it yet; check the name (a gateway, which never registers, calls as its --name)\n"
	if errOut != wantWarn {
		t.Errorf("apply stderr:\n%s\nwant exactly:\n%s", errOut, wantWarn)
	}

	want := `service "reviews" does not accept calls from "ratings": its config (revision ` + rev +
		`) lists callers [productpage, ratngs]; add "ratings" to callers in its config document and natsmesh apply it` + "\n"
	meshtest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		status, code, body, err := callersGet(hc, ratingsOut, "reviews")
		if err != nil || status != http.StatusForbidden || code != "forbidden" || body != want {
			return fmt.Errorf("ratings got %d %q %q (%v), want 403 forbidden %q", status, code, body, err, want)
		}
		return nil
	})
	before := appCount(t, hc, reviewsApp)
	const refused = 10
	for range refused {
		if status, code, body, err := callersGet(hc, ratingsOut, "reviews"); err != nil || status != http.StatusForbidden || code != "forbidden" {
			t.Fatalf("ratings got %d %q %q (%v), want 403 forbidden", status, code, body, err)
		}
	}
	if after := appCount(t, hc, reviewsApp); after != before {
		t.Errorf("the app of reviews counted %s calls before the refused ones and %s after: a refused call reached it", before, after)
	}
	status, code, body, err := callersGet(hc, ppOut, "reviews")
	if err != nil || status != http.StatusOK || body != appBody("reviews", "productpage", "/work") {
		t.Errorf("productpage, on the list, got %d %q %q (%v)", status, code, body, err)
	}

	// natsmesh call names no caller, so a list refuses it too.
	_, callErr, callCode := natsmesh(t, "call", "reviews", "/work", "--nats", natsURL)
	if callCode != 1 || !strings.Contains(callErr, "forbidden (HTTP 403") || !strings.Contains(callErr, "does not accept calls from unnamed callers") {
		t.Errorf("natsmesh call exited %d: %s", callCode, callErr)
	}

	// natsmesh top shows the refusals by their code, on the edge and on the
	// service, without counting them as the service's failures.
	meshtest.CheckFor(t, 15*time.Second, 100*time.Millisecond, func() error {
		s := topJSON(t, "--nats", natsURL)
		var edge *metrics.EdgeStats
		for i := range s.Edges {
			if s.Edges[i].From == "ratings" && s.Edges[i].To == "reviews" {
				edge = &s.Edges[i]
			}
		}
		var svc *metrics.ServiceStats
		for i := range s.Services {
			if s.Services[i].Name == "reviews" {
				svc = &s.Services[i]
			}
		}
		switch {
		case edge == nil || svc == nil:
			return fmt.Errorf("no edge ratings → reviews or service reviews yet: %+v", s)
		case edge.Errors["forbidden"] < refused || svc.Errors["forbidden"] < refused:
			return fmt.Errorf("forbidden: %d on the edge, %d on the service; want %d or more", edge.Errors["forbidden"], svc.Errors["forbidden"], refused)
		case svc.Success == nil || *svc.Success != 1:
			return fmt.Errorf("reviews' success %v, want 1: refusals are not its failures", svc.Success)
		}
		return nil
	})

	// The corrected list lets ratings in, with no warning.
	fixed := configFile(t, "callers-fixed.yaml", "service: reviews\ncallers: [productpage, ratings]\n")
	out, errOut = mustRun(t, "apply", "-f", fixed, "--nats", natsURL)
	revisionIn(t, `(?m)^reviews: applied revision (\d+)$`, out)
	if errOut != "" {
		t.Errorf("apply of a list naming running services warned:\n%s", errOut)
	}
	meshtest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		status, code, body, err := callersGet(hc, ratingsOut, "reviews")
		if err != nil || status != http.StatusOK || body != appBody("reviews", "ratings", "/work") {
			return fmt.Errorf("ratings got %d %q %q (%v), want the app's answer", status, code, body, err)
		}
		return nil
	})
}
