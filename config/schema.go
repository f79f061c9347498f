package config

import (
	"encoding/json"
	"fmt"
	"time"

	"go.yaml.in/yaml/v3"
)

// The doc comments of the schema's types and fields are its reference
// documentation: the field reference of docs/config.md is generated from
// them, and a test fails when it is out of date.

// Service is the config of one service: how every caller's proxy reaches it.
// Fields left out keep the caller's defaults (its sidecar flags).
type Service struct {
	// Service is the name of the service this document configures.
	Service string `json:"service" yaml:"service"`
	// Timeout bounds each call to the service, retries included (at most
	// 5m).
	Timeout Duration `json:"timeout,omitempty" yaml:"timeout,omitempty"`
	// Retries says when failed calls are tried again.
	Retries *Retries `json:"retries,omitempty" yaml:"retries,omitempty"`
	// Breaker sets the caller's circuit breaker for the service.
	Breaker *Breaker `json:"breaker,omitempty" yaml:"breaker,omitempty"`
	// LoadBalancer chooses how an instance is picked for each call.
	LoadBalancer *LoadBalancer `json:"loadBalancer,omitempty" yaml:"loadBalancer,omitempty"`
	// Routes are tried in order; the first whose match accepts a request
	// sends it to its split of subsets. A request no route matches goes to
	// every instance of the service, whatever its subset.
	Routes []Route `json:"routes,omitempty" yaml:"routes,omitempty"`
	// Fault injects delays and failures into a share of the calls, for
	// testing how callers cope.
	Fault *Fault `json:"fault,omitempty" yaml:"fault,omitempty"`
	// Callers lists the services allowed to call this one; the service's
	// own instances refuse calls from any other with 403 forbidden. Left
	// out, every service of the mesh may call it; an empty list, [], lets
	// none.
	Callers Names `json:"callers,omitzero" yaml:"callers,omitempty"`
}

// Names is a list of service names in which an empty list is a value of
// its own: only a nil list is left out when a document is written, so
// "callers: []" (nobody) never turns into an absent list (everybody).
type Names []string

// IsZero reports whether the list is absent (nil), for the json omitzero
// and yaml omitempty of the fields of this type.
func (n Names) IsZero() bool { return n == nil }

// Retries says when failed calls are tried again. Whatever it says, a
// failure that may have reached an app (a timeout, upstream-lost,
// upstream-unreachable, a 502, 503 or 504) is retried only for idempotent
// requests.
type Retries struct {
	// Attempts is how many times a call may be tried again after its first
	// attempt; 0 turns retries off (default 2).
	Attempts *int `json:"attempts,omitempty" yaml:"attempts,omitempty"`
	// On lists the failures that are retried (default: all of them):
	// no-responders, overloaded, mesh-unavailable, timeout, upstream-lost,
	// upstream-unreachable, 502, 503, 504.
	On []string `json:"on,omitempty" yaml:"on,omitempty"`
	// PerTryTimeout bounds each attempt, so that a timed-out call can be
	// retried within its timeout (default: an attempt may use all the time
	// left).
	PerTryTimeout Duration `json:"perTryTimeout,omitempty" yaml:"perTryTimeout,omitempty"`
	// Backoff is the first wait before a retry; the wait grows 1.5× with each
	// retry, with ±50 % jitter (default 25ms).
	Backoff Duration `json:"backoff,omitempty" yaml:"backoff,omitempty"`
	// BackoffMax is the longest wait before a retry (default 250ms).
	BackoffMax Duration `json:"backoffMax,omitempty" yaml:"backoffMax,omitempty"`
	// Budget bounds retries to a share of the calls, so that retries cannot
	// multiply an outage.
	Budget *Budget `json:"budget,omitempty" yaml:"budget,omitempty"`
}

// Budget bounds retries over the last 10 s to Ratio of the calls plus
// MinPerSecond per second, so that retries cannot multiply an outage.
type Budget struct {
	// Ratio is the share of calls that may be retried, 0 to 1 (default 0.2).
	Ratio *float64 `json:"ratio,omitempty" yaml:"ratio,omitempty"`
	// MinPerSecond is the retries per second always allowed (default 10).
	MinPerSecond *float64 `json:"minPerSecond,omitempty" yaml:"minPerSecond,omitempty"`
}

// Breaker sets the circuit breaker a caller keeps for the service (and for
// each of its subsets that a route sends to).
type Breaker struct {
	// Enabled turns the breaker off when false (default true).
	Enabled *bool `json:"enabled,omitempty" yaml:"enabled,omitempty"`
	// Failures is how many failed calls in a row open the breaker
	// (default 5).
	Failures int `json:"failures,omitempty" yaml:"failures,omitempty"`
	// Ratio is the share of failed calls over the window that opens the
	// breaker, 0 to 1, once there were minRequests calls (default 0.5).
	Ratio float64 `json:"ratio,omitempty" yaml:"ratio,omitempty"`
	// MinRequests is how many calls the window must hold before the ratio
	// counts (default 20).
	MinRequests int `json:"minRequests,omitempty" yaml:"minRequests,omitempty"`
	// Window is how far back the ratio looks (default 10s).
	Window Duration `json:"window,omitempty" yaml:"window,omitempty"`
	// Open is how long it stays open before letting probes through
	// (default 5s).
	Open Duration `json:"open,omitempty" yaml:"open,omitempty"`
	// Probes is how many calls a half-open breaker lets through; all must
	// succeed to close it (default 3).
	Probes int `json:"probes,omitempty" yaml:"probes,omitempty"`
}

// Load-balancing policies.
const (
	// PolicyQueue lets NATS pick: the queue group of the service (or
	// subset), which prefers instances on the caller's own server.
	PolicyQueue = "queue"
	// PolicyLeastRequest picks the cheaper of two random instances: the
	// fewer requests in flight, weighted by the caller's latency estimate
	// of each.
	PolicyLeastRequest = "least-request"
	// PolicyRoundRobin takes the instances in turn.
	PolicyRoundRobin = "round-robin"
	// PolicyRingHash sends the same HashHeader value to the same instance
	// while it is up; when an instance leaves, only its keys move.
	PolicyRingHash = "ring-hash"
)

// Policies lists the load-balancing policies.
var Policies = []string{PolicyQueue, PolicyLeastRequest, PolicyRoundRobin, PolicyRingHash}

// LoadBalancer chooses how an instance is picked for each call. The
// instance-aware policies (least-request, round-robin, ring-hash) pick among
// the passing instances in the caller's zone (natsmesh sidecar --zone) while
// it has one, and among all of them when it has none; queue lets NATS pick
// and ignores zones.
type LoadBalancer struct {
	// Policy is queue (default), least-request, round-robin or ring-hash.
	Policy string `json:"policy" yaml:"policy"`
	// HashHeader names the request header whose value ring-hash hashes;
	// required for ring-hash, not allowed otherwise. Requests without the
	// header are spread at random.
	HashHeader string `json:"hashHeader,omitempty" yaml:"hashHeader,omitempty"`
}

// Route sends the requests its match accepts to a weighted split of subsets.
type Route struct {
	// Name names the route in logs (optional).
	Name string `json:"name,omitempty" yaml:"name,omitempty"`
	// Match says which requests the route takes; empty, it takes all.
	Match Match `json:"match,omitzero" yaml:"match,omitempty"`
	// Split maps subsets to weights, which add up to 100. Instances join a
	// subset with `natsmesh sidecar --subset NAME`.
	Split map[string]int `json:"split" yaml:"split"`
}

// Match says which requests a route takes: all of its conditions must hold.
type Match struct {
	// PathPrefix the request's path starts with.
	PathPrefix string `json:"pathPrefix,omitempty" yaml:"pathPrefix,omitempty"`
	// Methods, one of which is the request's (upper case).
	Methods []string `json:"methods,omitempty" yaml:"methods,omitempty"`
	// Headers the request carries with exactly these values (header names
	// are case-insensitive).
	Headers map[string]string `json:"headers,omitempty" yaml:"headers,omitempty"`
}

// Fault injects delays and failures into a share of the calls. The caller's
// proxy injects them, before the call is sent; an aborted call reaches no
// instance, and responses say Mesh-Fault: delay or abort.
type Fault struct {
	// Delay holds a share of the calls before sending them.
	Delay *Delay `json:"delay,omitempty" yaml:"delay,omitempty"`
	// Abort answers a share of the calls with a status, without sending
	// them.
	Abort *Abort `json:"abort,omitempty" yaml:"abort,omitempty"`
}

// Delay holds a share of the calls before sending them.
type Delay struct {
	// Percent is the share of calls delayed, 0 to 100.
	Percent float64 `json:"percent" yaml:"percent"`
	// Duration is how long each of them is held (within the call's
	// timeout).
	Duration Duration `json:"duration" yaml:"duration"`
}

// Abort answers a share of the calls with an error status.
type Abort struct {
	// Percent is the share of calls aborted, 0 to 100.
	Percent float64 `json:"percent" yaml:"percent"`
	// Status is the HTTP status they are answered with, 400 to 599.
	Status int `json:"status" yaml:"status"`
}

// Duration is a time.Duration written as text: "250ms", "2s", "1m30s".
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

func (d Duration) String() string { return time.Duration(d).String() }

// MarshalJSON writes d as text.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// UnmarshalJSON reads a duration written as text.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("a duration is text such as \"2s\", not %s", b)
	}
	return d.parse(s)
}

// MarshalYAML writes d as text.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// UnmarshalYAML reads a duration written as text.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("a duration is text such as \"2s\"")
	}
	return d.parse(n.Value)
}

func (d *Duration) parse(s string) error {
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%q is not a duration; write it like 250ms, 2s or 1m30s", s)
	}
	*d = Duration(v)
	return nil
}
