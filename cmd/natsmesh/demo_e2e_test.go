package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/internal/meshtest"
)

var (
	demoReady  = regexp.MustCompile(`NATS on (nats://\S+)`)
	reviewedBy = regexp.MustCompile(`Reviews served by reviews-(v[123])`)
)

// demoPage fetches the productpage through the gateway and returns the
// reviews version that served it.
func demoPage(hc *http.Client, page string) (string, string, error) {
	resp, err := hc.Get(page)
	if err != nil {
		return "", "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", "", err
	}
	body := string(b)
	if resp.StatusCode != http.StatusOK {
		return "", body, fmt.Errorf("status %d", resp.StatusCode)
	}
	m := reviewedBy.FindStringSubmatch(body)
	if m == nil {
		return "", body, fmt.Errorf("the page names no reviews version")
	}
	return m[1], body, nil
}

// natsmesh demo brings bookinfo up in one process: the page renders through
// the gateway with all four services taking part, a config applied from
// another process takes effect, and SIGINT stops everything, leaving no
// port open.
func TestDemo(t *testing.T) {
	gw := freeAddr(t)
	p := start(t, "demo", nil, natsmeshBin(t), "demo", "--listen", "127.0.0.1:0", "--gateway", gw)
	natsURL := p.waitOutput(t, demoReady, 60*time.Second)
	page := "http://" + gw + "/productpage"
	if !strings.Contains(p.stdout.String(), "open "+page) {
		t.Errorf("the demo does not say which page to open:\n%s", p.stdout)
	}
	for _, cmd := range []string{"natsmesh services", "natsmesh watch", "natsmesh apply -f examples/bookinfo/reviews-v3-canary.yaml", "export NATSMESH_URL=" + natsURL} {
		if !strings.Contains(p.stdout.String(), cmd) {
			t.Errorf("the demo does not suggest %q:\n%s", cmd, p.stdout)
		}
	}

	// Every service takes part in the page: productpage renders details
	// (from details), the reviews (from a reviews version) and, from v2
	// and v3, the stars (from ratings); the three versions take turns.
	hc := &http.Client{Timeout: 10 * time.Second}
	seen := map[string]bool{}
	meshtest.CheckFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		v, body, err := demoPage(hc, page)
		if err != nil {
			return err
		}
		for _, want := range []string{"The Comedy of Errors", "William Shakespeare", "Details served by instance"} {
			if !strings.Contains(body, want) {
				return fmt.Errorf("the page lacks %q", want)
			}
		}
		if v != "v1" && !strings.Contains(body, "stars)") {
			return fmt.Errorf("reviews %s served the page without stars from ratings", v)
		}
		if strings.Contains(body, `class="unavailable"`) {
			return fmt.Errorf("a service is unavailable in the page")
		}
		seen[v] = true
		if len(seen) < 3 {
			return fmt.Errorf("versions seen so far: %v", seen)
		}
		return nil
	})
	out, errOut, code := natsmesh(t, "services", "--nats", natsURL)
	if code != 0 {
		t.Fatalf("natsmesh services: exit %d: %s", code, errOut)
	}
	for _, re := range []string{`(?m)^productpage +1 +1 `, `(?m)^details +1 +1 `, `(?m)^reviews +3 +3 `, `(?m)^ratings +1 +1 `} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("natsmesh services does not match %s:\n%s", re, out)
		}
	}

	// The canary from the README: half to v1, half to v3, none to v2.
	if out, errOut, code := natsmesh(t, "apply", "-f", "../../examples/bookinfo/reviews-v3-canary.yaml", "--nats", natsURL); code != 0 {
		t.Fatalf("apply: exit %d: %s%s", code, out, errOut)
	}
	meshtest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		counts := map[string]int{}
		for range 40 {
			v, _, err := demoPage(hc, page)
			if err != nil {
				return err
			}
			counts[v]++
		}
		if counts["v2"] > 0 || counts["v1"] == 0 || counts["v3"] == 0 {
			return fmt.Errorf("40 pages were served by %v; want v1 and v3, no v2", counts)
		}
		return nil
	})

	// Ctrl-C stops everything; the ports are free again.
	p.signal(t, os.Interrupt)
	if code := p.wait(t, 20*time.Second); code != 0 {
		t.Fatalf("the demo exited %d after SIGINT", code)
	}
	natsAddr := strings.TrimPrefix(natsURL, "nats://")
	for _, addr := range []string{gw, natsAddr} {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Errorf("%s is still taken after the demo stopped: %v", addr, err)
			continue
		}
		l.Close()
	}
}

// A gateway port that is taken gets a clear error naming it and the flag.
func TestDemoPortTaken(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	addr := l.Addr().String()
	_, errOut, code := natsmesh(t, "demo", "--listen", "127.0.0.1:0", "--gateway", addr)
	if code == 0 || !strings.Contains(errOut, "the gateway cannot listen on "+addr) || !strings.Contains(errOut, "--gateway") {
		t.Errorf("demo with its gateway port taken: exit %d, stderr %q; want an error naming %s and --gateway", code, errOut, addr)
	}
	_, errOut, code = natsmesh(t, "demo", "--listen", addr, "--gateway", "127.0.0.1:0")
	if code == 0 || !strings.Contains(errOut, addr) || !strings.Contains(errOut, "--listen") {
		t.Errorf("demo with its NATS port taken: exit %d, stderr %q; want an error naming %s and --listen", code, errOut, addr)
	}
}
