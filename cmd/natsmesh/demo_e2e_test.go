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
	"github.com/natsmesh/natsmesh/metrics"
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
	for _, cmd := range []string{"natsmesh services", "natsmesh top", "natsmesh watch", "natsmesh apply -f examples/bookinfo/reviews-v3-canary.yaml", "export NATSMESH_URL=" + natsURL} {
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

// The newcomer's view of traffic: with the demo's own load, natsmesh top
// shows every bookinfo edge; the canary splits the edge to reviews into
// its subsets, and the ratings delay shows in that edge's latency and in
// that of productpage's calls to reviews v3, which it gives up after 1.5 s.
func TestDemoTop(t *testing.T) {
	t.Parallel()
	p := start(t, "demo", nil, natsmeshBin(t), "demo", "--listen", "127.0.0.1:0", "--gateway", freeAddr(t),
		"--traffic", "10", "--stats-interval", "300ms")
	natsURL := p.waitOutput(t, demoReady, 60*time.Second)
	edge := func(s metrics.Summary, from, to, subset string) *metrics.EdgeStats {
		for i, e := range s.Edges {
			if e.From == from && e.To == to && e.Subset == subset {
				return &s.Edges[i]
			}
		}
		return nil
	}
	top := func() metrics.Summary { return topJSON(t, "--nats", natsURL, "--window", "3s") }
	meshtest.CheckFor(t, 30*time.Second, 300*time.Millisecond, func() error {
		s := top()
		for _, e := range [][2]string{{"gateway", "productpage"}, {"productpage", "details"}, {"productpage", "reviews"}, {"reviews", "ratings"}} {
			st := edge(s, e[0], e[1], "")
			if st == nil || st.RPS == 0 || st.Success == nil || *st.Success < 0.9 || st.P50MS == nil {
				return fmt.Errorf("edge %s → %s: %+v, want traffic that succeeds", e[0], e[1], st)
			}
		}
		return nil
	})

	if out, errOut, code := natsmesh(t, "apply", "-f", "../../examples/bookinfo/reviews-v3-canary.yaml", "--nats", natsURL); code != 0 {
		t.Fatalf("apply: exit %d: %s%s", code, out, errOut)
	}
	meshtest.CheckFor(t, 30*time.Second, 300*time.Millisecond, func() error {
		s := top()
		v1, v3 := edge(s, "productpage", "reviews", "v1"), edge(s, "productpage", "reviews", "v3")
		if v1 == nil || v3 == nil || v1.RPS == 0 || v3.RPS == 0 || edge(s, "productpage", "reviews", "v2") != nil {
			return fmt.Errorf("after the canary, edges to reviews/v1 %+v and reviews/v3 %+v, want both with traffic and none to v2", v1, v3)
		}
		return nil
	})

	if out, errOut, code := natsmesh(t, "apply", "-f", "../../examples/bookinfo/ratings-delay.yaml", "--nats", natsURL); code != 0 {
		t.Fatalf("apply: exit %d: %s%s", code, out, errOut)
	}
	meshtest.CheckFor(t, 30*time.Second, 300*time.Millisecond, func() error {
		s := top()
		ratings, v3 := edge(s, "reviews", "ratings", ""), edge(s, "productpage", "reviews", "v3")
		if ratings == nil || ratings.P95MS == nil || *ratings.P95MS < 1000 {
			return fmt.Errorf("edge reviews → ratings %+v, want a p95 of 2 s from the injected delay", ratings)
		}
		if v3 == nil || v3.P95MS == nil || *v3.P95MS < 1000 {
			return fmt.Errorf("edge productpage → reviews/v3 %+v, want a p95 of 1.5 s: productpage gives up on reviews after 1.5 s", v3)
		}
		return nil
	})
	p.signal(t, os.Interrupt)
	if code := p.wait(t, 20*time.Second); code != 0 {
		t.Fatalf("the demo exited %d after SIGINT", code)
	}
}
