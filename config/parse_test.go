package config_test

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/config"
)

// Every problem of a file is reported, each with the file, the line, the
// service and the field, in exactly these words.
func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want string
	}{
		{"unknown top-level field", `
service: reviews
timeuot: 2s
`, `mesh.yaml:3: service reviews: timeuot: unknown field "timeuot"; the fields here are service, timeout, retries, breaker, loadBalancer, routes, fault, callers`},
		{"unknown nested field", `
service: reviews
routes:
  - match:
      pathPrefx: /api
    split: {v1: 100}
`, `mesh.yaml:5: service reviews: routes[0].match.pathPrefx: unknown field "pathPrefx"; the fields here are pathPrefix, methods, headers`},
		{"weights not adding up to 100", `
service: reviews
routes:
  - split:
      v1: 90
      v2: 5
`, `mesh.yaml:4: service reviews: routes[0].split: weights add up to 95; they must add up to 100`},
		{"negative weight", `
service: reviews
routes:
  - split: {v1: 110, v2: -10}
`, "mesh.yaml:4: service reviews: routes[0].split.v1: weight 110 is out of range; use 0 to 100\n" +
			"mesh.yaml:4: service reviews: routes[0].split.v2: weight -10 is out of range; use 0 to 100"},
		{"missing split", `
service: reviews
routes:
  - match: {pathPrefix: /a}
`, `mesh.yaml:4: service reviews: routes[0].split: missing; say which subsets get the route's traffic, such as {v1: 90, v2: 10}`},
		{"bad duration", `
service: ratings
timeout: 2x
`, `mesh.yaml:3: service ratings: timeout: "2x" is not a duration; write it like 250ms, 2s or 1m30s`},
		{"timeout over the limit", `
service: ratings
timeout: 10m
`, `mesh.yaml:3: service ratings: timeout: 10m0s is longer than the limit of 5m0s`},
		{"invalid service name", `
service: Reviews
`, `mesh.yaml:2: service Reviews: service: service name "Reviews" has 'R' at position 1; use only lowercase letters, digits, '-' or '_'`},
		{"invalid subset name", `
service: reviews
routes:
  - split: {v1.x: 100}
`, `mesh.yaml:4: service reviews: routes[0].split.v1.x: subset name "v1.x" has '.' at position 3; use only lowercase letters, digits, '-' or '_'`},
		{"missing service", `
timeout: 1s
`, `mesh.yaml:2: service: missing; name the service this document configures`},
		{"unknown policy", `
service: reviews
loadBalancer: {policy: random}
`, `mesh.yaml:3: service reviews: loadBalancer.policy: unknown policy "random"; use one of queue, least-request, round-robin, ring-hash`},
		{"ring-hash without a header", `
service: reviews
loadBalancer:
  policy: ring-hash
`, `mesh.yaml:3: service reviews: loadBalancer.hashHeader: missing; ring-hash needs the name of the header to hash`},
		{"hash header without ring-hash", `
service: reviews
loadBalancer:
  policy: round-robin
  hashHeader: x-user
`, `mesh.yaml:5: service reviews: loadBalancer.hashHeader: only ring-hash uses a hash header, and the policy is round-robin`},
		{"abort status and percent", `
service: ratings
fault:
  abort:
    percent: 120
    status: 200
`, "mesh.yaml:5: service ratings: fault.abort.percent: 120 is out of range; use 0 to 100\n" +
			"mesh.yaml:6: service ratings: fault.abort.status: 200 is not an error status; use 400 to 599"},
		{"delay without duration", `
service: ratings
fault:
  delay: {percent: 10}
`, `mesh.yaml:4: service ratings: fault.delay.duration: missing; say how long to delay, such as 2s`},
		{"unknown retry condition", `
service: ratings
retries:
  on:
    - timeout
    - 500
`, `mesh.yaml:6: service ratings: retries.on[1]: unknown condition "500"; use one of no-responders, overloaded, mesh-unavailable, timeout, upstream-lost, upstream-unreachable, 502, 503, 504`},
		{"attempts out of range", `
service: ratings
retries: {attempts: 11}
`, `mesh.yaml:3: service ratings: retries.attempts: 11 is out of range; use 0 (no retries) to 10`},
		{"attempts not a number", `
service: ratings
retries:
  attempts: two
`, "mesh.yaml:4: service ratings: cannot unmarshal !!str `two` into int"},
		{"a list where a mapping belongs", `
service: ratings
breaker: [1, 2]
`, `mesh.yaml:3: service ratings: breaker: want a mapping of fields (enabled, failures, ratio, minRequests, window, open, probes), not a list`},
		{"header match on a mesh header", `
service: reviews
routes:
  - match:
      headers: {mesh-caller: x}
    split: {v1: 100}
`, `mesh.yaml:5: service reviews: routes[0].match.headers.mesh-caller: Mesh-Caller is one of the mesh's own headers, which apps cannot send`},
		{"hash on Host", `
service: reviews
loadBalancer: {policy: ring-hash, hashHeader: host}
`, `mesh.yaml:3: service reviews: loadBalancer.hashHeader: Host names the service itself; use another header`},
		{"header name with a space", `
service: reviews
routes:
  - match: {headers: {"x user": a}}
    split: {v1: 100}
`, `mesh.yaml:4: service reviews: routes[0].match.headers.x user: "x user" is not a valid header name`},
		{"lower-case method", `
service: reviews
routes:
  - match: {methods: [get]}
    split: {v1: 100}
`, `mesh.yaml:4: service reviews: routes[0].match.methods[0]: "get" is not an HTTP method in upper case, such as GET`},
		{"backoff max under backoff", `
service: reviews
retries:
  backoff: 1s
  backoffMax: 100ms
`, `mesh.yaml:5: service reviews: retries.backoffMax: 100ms is shorter than backoff (1s)`},
		{"service twice", `
service: reviews
---
service: reviews
timeout: 1s
`, `mesh.yaml:4: service reviews: service: the service is configured twice in this file (first on line 2)`},
		{"not a mapping", `
- service: reviews
`, `mesh.yaml:2: a document is a mapping of fields that starts with service: NAME`},
		{"YAML syntax", "service: reviews\n\tretries: {}\n", `mesh.yaml:2: found a tab character that violates indentation`},
		{"an alias inside itself", `
service: reviews
routes:
  - &r
    match: {headers: *r}
    split: {v1: 100}
`, "mesh.yaml:5: service reviews: routes[0].match.headers.match: want a single value, not a mapping\n" +
			"mesh.yaml:6: service reviews: routes[0].match.headers.split: want a single value, not a mapping"},
		{"not a number", `
service: ratings
fault:
  delay: {percent: .nan, duration: 1s}
breaker: {ratio: .nan}
retries: {budget: {ratio: .inf}}
`, "mesh.yaml:6: service ratings: retries.budget.ratio: +Inf is out of range; use 0 to 1\n" +
			"mesh.yaml:5: service ratings: breaker.ratio: NaN is out of range; use 0 to 1\n" +
			"mesh.yaml:4: service ratings: fault.delay.percent: NaN is out of range; use 0 to 100"},
		{"a field twice", `
service: reviews
timeout: 1s
timeout: 2s
`, `mesh.yaml:4: service reviews: mapping key "timeout" already defined at line 3`},
		{"empty file", "\n# nothing here\n", `mesh.yaml: the file has no service documents; each starts with service: NAME`},
		{"problems in several documents", `
service: reviews
timeout: -1s
---
service: ratings
routes:
  - split: {v1: 50}
`, "mesh.yaml:3: service reviews: timeout: -1s is negative\n" +
			"mesh.yaml:7: service ratings: routes[0].split: weights add up to 50; they must add up to 100"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			docs, err := config.Parse("mesh.yaml", []byte(tc.yaml))
			if err == nil {
				t.Fatalf("Parse accepted the file and returned %d documents; want the error\n%s", len(docs), tc.want)
			}
			if docs != nil {
				t.Errorf("Parse returned %d documents with its error; want none, so that nothing is applied", len(docs))
			}
			if got := err.Error(); got != tc.want {
				t.Errorf("error:\n%s\nwant:\n%s", got, tc.want)
			}
			var ce *config.Error
			if !errors.As(err, &ce) || ce.File != "mesh.yaml" {
				t.Errorf("error %T, want a *config.Error for mesh.yaml", err)
			}
		})
	}
}

func TestParseValid(t *testing.T) {
	docs, err := config.Parse("mesh.yaml", []byte(`
# reviews: canary and a test user
service: reviews
timeout: 2s
retries:
  attempts: 0
  budget: {ratio: 0.5}
loadBalancer: {policy: ring-hash, hashHeader: x-user}
routes:
  - name: jason
    match:
      headers: {X-User: jason}
      methods: [GET, HEAD]
      pathPrefix: /reviews
    split: {v2: 100}
  - split: {v1: 90, v3: 10}
---
service: ratings
fault:
  delay: {percent: 10, duration: 1500ms}
  abort: {percent: 2.5, status: 503}
breaker: {enabled: false}
---
`))
	if err != nil {
		t.Fatal(err)
	}
	if len(docs) != 2 || docs[0].Service != "reviews" || docs[1].Service != "ratings" {
		t.Fatalf("documents %+v, want reviews then ratings", docs)
	}
	r := docs[0]
	if r.Timeout.D() != 2*time.Second || r.Retries.Attempts == nil || *r.Retries.Attempts != 0 || *r.Retries.Budget.Ratio != 0.5 {
		t.Errorf("reviews: timeout %s, retries %+v", r.Timeout, r.Retries)
	}
	if r.LoadBalancer.Policy != config.PolicyRingHash || r.LoadBalancer.HashHeader != "x-user" {
		t.Errorf("reviews: load balancer %+v", r.LoadBalancer)
	}
	wantRoutes := []config.Route{
		{Name: "jason", Match: config.Match{PathPrefix: "/reviews", Methods: []string{"GET", "HEAD"}, Headers: map[string]string{"X-User": "jason"}}, Split: map[string]int{"v2": 100}},
		{Split: map[string]int{"v1": 90, "v3": 10}},
	}
	if !reflect.DeepEqual(r.Routes, wantRoutes) {
		t.Errorf("reviews: routes %+v, want %+v", r.Routes, wantRoutes)
	}
	g := docs[1]
	if g.Fault.Delay.Duration.D() != 1500*time.Millisecond || g.Fault.Abort.Percent != 2.5 || *g.Breaker.Enabled {
		t.Errorf("ratings: fault %+v %+v, breaker %+v", g.Fault.Delay, g.Fault.Abort, g.Breaker)
	}

	// What is stored is JSON that reads back to the same document.
	for _, d := range docs {
		b, err := config.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		back, err := config.Unmarshal(b)
		if err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		if !reflect.DeepEqual(back, d) {
			t.Errorf("JSON round trip of %s: got %+v, want %+v", d.Service, back, d)
		}
	}
}

func TestParseLimits(t *testing.T) {
	// Aliases that make a small file stand for a huge document are refused
	// quickly.
	var a strings.Builder
	a.WriteString("m: &m [" + strings.Repeat("GET, ", 2000) + "GET]\nr: &r {split: {v1: 100}, match: {methods: *m}}\nservice: reviews\nroutes: [")
	a.WriteString(strings.Repeat("*r, ", 2000) + "*r]\n")
	start := time.Now()
	_, err := config.Parse("alias.yaml", []byte(a.String()))
	if err == nil || !strings.Contains(err.Error(), "expands to more than 20000 fields and values") {
		t.Errorf("an alias bomb: %v", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("an alias bomb took %s to refuse", took)
	}

	big := "service: x\n# " + strings.Repeat("x", config.MaxFileSize) + "\n"
	if _, err := config.Parse("big.yaml", []byte(big)); err == nil || !strings.Contains(err.Error(), "at most 1048576") {
		t.Errorf("a file over the limit: %v", err)
	}
	var b strings.Builder
	b.WriteString("service: x\nroutes:\n")
	for range config.MaxRoutes + 1 {
		b.WriteString("  - split: {v1: 100}\n")
	}
	_, err = config.Parse("many.yaml", []byte(b.String()))
	if want := "many.yaml:2: service x: routes: 65 routes; at most 64 are allowed"; err == nil || err.Error() != want {
		t.Errorf("too many routes: %v, want %s", err, want)
	}
}

// A stored document a proxy reads is checked again, and fields it does not
// know (written by a newer natsmesh) are ignored.
func TestUnmarshal(t *testing.T) {
	s, err := config.Unmarshal([]byte(`{"service":"reviews","timeout":"1s","future":{"x":1}}`))
	if err != nil || s.Service != "reviews" || s.Timeout.D() != time.Second {
		t.Errorf("with an unknown field: %+v, %v", s, err)
	}
	for _, tc := range []struct{ doc, want string }{
		{`{"service":"reviews","timeout":5}`, `config: the stored document is not valid JSON: a duration is text such as "2s", not 5`},
		{`{"service":"reviews","routes":[{"split":{"v1":10}}]}`, `config: the stored document for "reviews" is invalid: routes[0].split: weights add up to 10; they must add up to 100`},
		{`not json`, `config: the stored document is not valid JSON: invalid character 'o' in literal null (expecting 'u')`},
	} {
		if _, err := config.Unmarshal([]byte(tc.doc)); err == nil || err.Error() != tc.want {
			t.Errorf("Unmarshal(%s): %v, want %s", tc.doc, err, tc.want)
		}
	}
}

// Parse never panics, and whatever it accepts is valid and survives the
// JSON it is stored as.
func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		"service: a\n",
		"service: a\nroutes:\n  - split: {v1: 100}\n",
		"service: a\ntimeout: 1s\n---\nservice: b\nfault: {abort: {percent: 1, status: 503}}\n",
		"service: a\nloadBalancer: {policy: ring-hash, hashHeader: x}\n",
		"- 1\n",
		"a: &x [*x]\n",
		"service: a\ncallers: []\n",
		"service: a\ncallers: [b, c]\n",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		docs, err := config.Parse("f.yaml", []byte(s))
		if err != nil {
			return
		}
		for _, d := range docs {
			if ps := d.Validate(); len(ps) > 0 {
				t.Fatalf("Parse accepted a document with problems %v", ps)
			}
			b, err := config.Marshal(d)
			if err != nil {
				t.Fatal(err)
			}
			back, err := config.Unmarshal(b)
			if err != nil {
				t.Fatalf("an accepted document does not read back: %v", err)
			}
			if (back.Callers == nil) != (d.Callers == nil) {
				t.Fatalf("callers %#v read back as %#v: absent and empty differ", d.Callers, back.Callers)
			}
		}
	})
}

// Every example file in the repository is valid as it stands.
func TestExamplesParse(t *testing.T) {
	files, err := filepath.Glob("../examples/*/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no example config files under examples/")
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := config.Parse(f, b); err != nil {
			t.Errorf("%v", err)
		}
	}
}
