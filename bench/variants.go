package main

import (
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/natsmesh/natsmesh/internal/procstat"
)

// variant is one way of running the mesh: a caller and a callee sidecar of
// some binary with some flags, serving the app as its own service.
type variant struct {
	name string
	bin  string // "" is the binary built from this tree
	args []string
	env  []string
	// calleeArgs are added to the callee's flags; config, if set, is a
	// config document applied for the service (%s is its name) before the
	// measurements.
	calleeArgs []string
	config     string
	// tls: both sidecars connect over TLS to a second server, run with
	// --tls-auto, instead of the plaintext one.
	tls bool
	// anonymous: both sidecars connect without credentials to a second
	// server, run with --allow-anonymous, instead of on identities of their
	// own.
	anonymous bool
	caller    string // the caller's outbound address, once started
}

// securityVariants compare the sidecar path on a server that accepts
// anonymous clients with the secure default: credentials, and every
// service's permissions.
func securityVariants() []*variant {
	return []*variant{{name: "plain", anonymous: true}, {name: "secure"}}
}

// startAnonymousServer starts `natsmesh server --allow-anonymous` on a free
// loopback port and returns the flags its clients connect with.
func startAnonymousServer(p *procstat.Procs, bin, dir string) ([]string, error) {
	addr, err := procstat.FreeAddr()
	if err != nil {
		return nil, err
	}
	if _, err := p.Start(bin, nil, "server", "--allow-anonymous", "--listen", addr, "--data", filepath.Join(dir, "anon-data"), "--log-level", "warn"); err != nil {
		return nil, err
	}
	return []string{"--nats", "nats://" + addr}, nil
}

// tlsVariants compare the sidecar path over plaintext NATS with the same
// path where both sidecars reach the server over TLS on loopback.
func tlsVariants() []*variant {
	return []*variant{{name: "plain"}, {name: "tls", tls: true}}
}

// startTLSServer starts `natsmesh server --tls-auto` on a free loopback
// port and returns the flags its clients connect with, once its CA is
// written.
func startTLSServer(p *procstat.Procs, bin, dir string) ([]string, error) {
	addr, err := procstat.FreeAddr()
	if err != nil {
		return nil, err
	}
	data := filepath.Join(dir, "tls-data")
	if _, err := p.Start(bin, nil, "server", "--tls-auto", "--listen", addr, "--data", data, "--log-level", "warn"); err != nil {
		return nil, err
	}
	ca := filepath.Join(data, "tls", "ca.pem")
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(ca); err == nil {
			return []string{"--nats", "tls://" + addr, "--tls-ca", ca}, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("natsmesh server --tls-auto wrote no %s within 10s", ca)
		}
	}
}

// resilienceVariants compare the cost of the resilience features side by
// side: none (retries and breakers off), the defaults, and the defaults with
// tracing on and sampling off; and, given a baseline binary, the mesh as
// that binary runs it.
func resilienceVariants(baselineBin string) []*variant {
	var vs []*variant
	if baselineBin != "" {
		// An earlier revision may predate identities: it runs on a server
		// that takes anonymous clients.
		vs = append(vs, &variant{name: "baseline", bin: baselineBin, anonymous: true})
	}
	return append(vs,
		&variant{name: "plain", args: []string{"--retries", "0", "--breaker", "off"}},
		&variant{name: "default"},
		&variant{name: "traced", env: []string{"OTEL_TRACES_EXPORTER=console", "OTEL_TRACES_SAMPLER=always_off"}},
	)
}

// metricsVariants compare the mesh recording no metrics with the default
// (recorded, and published every 5 s as a stats snapshot) and with the
// Prometheus endpoint served as well.
func metricsVariants() []*variant {
	return []*variant{
		{name: "off", args: []string{"--stats-interval", "0"}},
		{name: "on", args: nil},
		{name: "endpoint", args: []string{"--metrics", "127.0.0.1:0"}},
	}
}

// routeVariants compare a service with no config to one whose config has 5
// routes, the first four of which never match the benchmark's requests, so
// that every call goes through the whole list to the catch-all split.
func routeVariants() []*variant {
	return []*variant{
		{name: "none", calleeArgs: []string{"--subset", "v1"}},
		{name: "routed", calleeArgs: []string{"--subset", "v1"}, config: `service: %s
routes:
  - match: {headers: {x-user: jason}}
    split: {v1: 100}
  - match: {pathPrefix: /api/v2}
    split: {v1: 100}
  - match: {methods: [POST, PUT], pathPrefix: /orders}
    split: {v1: 100}
  - match: {headers: {x-canary: "1", x-region: eu}}
    split: {v1: 100}
  - split: {v1: 100}
`},
	}
}

// buildAt builds the natsmesh of git revision ref into dir.
func buildAt(ref, dir string) (string, error) {
	src := filepath.Join(dir, "src-"+strings.NewReplacer("/", "_", ":", "_").Replace(ref))
	if err := os.MkdirAll(src, 0o755); err != nil {
		return "", err
	}
	archive := exec.Command("sh", "-c", fmt.Sprintf("git archive %q | tar -x -C %q", ref, src))
	archive.Stderr = os.Stderr
	if err := archive.Run(); err != nil {
		return "", fmt.Errorf("extract %s (run the benchmark from the repository): %w", ref, err)
	}
	bin := filepath.Join(dir, "natsmesh-"+filepath.Base(src))
	build := exec.Command("go", "build", "-o", bin, "./cmd/natsmesh")
	build.Dir = src
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		return "", fmt.Errorf("build natsmesh at %s: %w", ref, err)
	}
	return bin, nil
}

// runVariants measures each variant's throughput at conns connections,
// rounds times, the variants one after the other within each round (in a
// rotating order, so that drift of the machine's speed hits them alike).
func runVariants(vs []*variant, conns int, duration, warmup time.Duration, size, rounds int) error {
	dir, err := os.MkdirTemp("", "natsmesh-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin, err := procstat.BuildNatsmesh(dir)
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	var p procstat.Procs
	defer p.StopAll()
	appAddr, _ := procstat.FreeAddr()
	natsAddr, _ := procstat.FreeAddr()
	natsURL := "nats://" + natsAddr
	if _, err := p.Start(self, []string{appEnv + "=" + appAddr, "NATSMESH_BENCH_SIZE=" + fmt.Sprint(size)}); err != nil {
		return err
	}
	if _, err := p.Start(bin, nil, "server", "--listen", natsAddr, "--data", filepath.Join(dir, "data"), "--log-level", "warn"); err != nil {
		return err
	}
	var tlsNATS, anonNATS []string // the other servers' client flags, once started
	for _, v := range vs {
		natsFlags, data := []string{"--nats", natsURL}, filepath.Join(dir, "data")
		if v.tls && tlsNATS == nil {
			if tlsNATS, err = startTLSServer(&p, bin, dir); err != nil {
				return err
			}
		}
		if v.anonymous && anonNATS == nil {
			if anonNATS, err = startAnonymousServer(&p, bin, dir); err != nil {
				return err
			}
		}
		switch {
		case v.tls:
			natsFlags, data = tlsNATS, filepath.Join(dir, "tls-data")
		case v.anonymous:
			natsFlags, data = anonNATS, ""
		}
		b := v.bin
		if b == "" {
			b = bin
		}
		service := "app-" + v.name
		calleeAddr, _ := procstat.FreeAddr()
		v.caller, _ = procstat.FreeAddr()
		sidecar := func(service, listen string) ([]string, error) {
			args := append(append([]string{"sidecar", "--service", service, "--upstream", "http://" + appAddr, "--listen", listen, "--log-level", "warn"}, natsFlags...), v.args...)
			if data == "" {
				return args, nil
			}
			creds, err := identityFlags(bin, data, service)
			return append(args, creds...), err
		}
		calleeArgs, err := sidecar(service, calleeAddr)
		if err != nil {
			return err
		}
		if _, err := p.Start(b, v.env, append(calleeArgs, v.calleeArgs...)...); err != nil {
			return err
		}
		if v.config != "" {
			if err := applyConfig(bin, natsURL, filepath.Join(dir, v.name+".yaml"), fmt.Sprintf(v.config, service)); err != nil {
				return fmt.Errorf("variant %s: %w", v.name, err)
			}
		}
		callerArgs, err := sidecar("client-"+v.name, v.caller)
		if err != nil {
			return err
		}
		if _, err := p.Start(b, v.env, callerArgs...); err != nil {
			return err
		}
		proxyURL, _ := url.Parse("http://" + v.caller)
		if err := procstat.WaitHTTP(newClient(proxyURL, 1), "http://"+service+"/"); err != nil {
			return fmt.Errorf("variant %s: %w", v.name, err)
		}
	}

	fmt.Printf("natsmesh variants: %d-byte responses, %d conns, %s per measurement, %d rounds\n\n", size, conns, duration, rounds)
	rps := make([][]float64, len(vs)) // [variant][round]
	for r := 0; r < rounds; r++ {
		for k := range vs {
			i := (k + r) % len(vs)
			v := vs[i]
			proxyURL, _ := url.Parse("http://" + v.caller)
			m := load(newClient(proxyURL, conns), "http://app-"+v.name+"/", conns, warmup, duration, nil)
			if m.errors > 0 {
				fmt.Printf("warning: %d requests failed through %s\n", m.errors, v.name)
			}
			fmt.Printf("round %d  %-9s %10.0f req/s  p50 %s  p99 %s\n", r+1, v.name, m.rps(), fmtDur(m.p(50)), fmtDur(m.p(99)))
			rps[i] = append(rps[i], m.rps())
		}
	}
	ref := 0 // the first variant, or "plain"
	for i, v := range vs {
		if v.name == "plain" {
			ref = i
		}
	}
	fmt.Printf("\nthroughput relative to %s, per round: median [lowest, highest]\n", vs[ref].name)
	for i, v := range vs {
		ratios := make([]float64, rounds)
		for r := range ratios {
			ratios[r] = rps[i][r] / rps[ref][r]
		}
		fmt.Printf("  %-9s %s\n", v.name, medianRange(ratios))
	}
	return nil
}

// applyConfig applies a config document with `natsmesh apply`, retrying
// while the server's config bucket is not there yet.
func applyConfig(bin, natsURL, file, doc string) error {
	if err := os.WriteFile(file, []byte(doc), 0o644); err != nil {
		return err
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := exec.Command(bin, "apply", "-f", file, "--nats", natsURL, "--creds", filepath.Join(filepath.Dir(file), "data", "admin.creds")).CombinedOutput()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("natsmesh apply: %v: %s", err, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
