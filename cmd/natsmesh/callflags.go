package main

import (
	"flag"
	"time"

	"github.com/natsmesh/natsmesh/breaker"
	"github.com/natsmesh/natsmesh/proxy"
	"github.com/natsmesh/natsmesh/proxy/traffic"
)

// callFlags are the knobs of outbound calls that the sidecar and the gateway
// share: retries, the retry budget, the circuit breaker and the ack wait.
// Each command registers its own --timeout and --max-body, whose meaning it
// words for its callers.
type callFlags struct {
	retries        *int
	breakerOn      *string
	Retry          traffic.RetryPolicy
	Breaker        breaker.Settings
	DisableBreaker bool
	AckWait        time.Duration
}

func (c *callFlags) register(fs *flag.FlagSet) {
	c.retries = fs.Int("retries", traffic.DefaultRetries, "retries of a failed outbound call (0: none); only failures that are safe to retry are, see README")
	fs.DurationVar(&c.Retry.BackoffBase, "retry-backoff", traffic.DefaultBackoffBase, "first wait before a retry; it grows 1.5× per retry, with jitter, up to --retry-backoff-max")
	fs.DurationVar(&c.Retry.BackoffMax, "retry-backoff-max", traffic.DefaultBackoffMax, "longest wait before a retry")
	fs.DurationVar(&c.Retry.PerTryTimeout, "per-try-timeout", 0, "deadline of each attempt, so a timed-out idempotent call can be retried (0: an attempt may use the whole --timeout)")
	fs.Float64Var(&c.Retry.BudgetRatio, "retry-budget", traffic.DefaultBudgetRatio, "retries per destination may be at most this share of its calls over 10s, plus --retry-budget-min")
	fs.Float64Var(&c.Retry.BudgetMinPerSecond, "retry-budget-min", traffic.DefaultBudgetMinPerSecond, "retries per second per destination always allowed by the budget")
	c.breakerOn = fs.String("breaker", "on", "circuit breaker per destination service: on or off")
	fs.IntVar(&c.Breaker.ConsecutiveFailures, "breaker-failures", breaker.DefaultConsecutiveFailures, "failures in a row that open the breaker")
	fs.Float64Var(&c.Breaker.FailureRatio, "breaker-ratio", breaker.DefaultFailureRatio, "share of failed calls over --breaker-window that opens the breaker")
	fs.IntVar(&c.Breaker.MinRequests, "breaker-min-requests", breaker.DefaultMinRequests, "calls needed in the window before --breaker-ratio applies")
	fs.DurationVar(&c.Breaker.Window, "breaker-window", breaker.DefaultWindow, "rolling window of --breaker-ratio")
	fs.DurationVar(&c.Breaker.OpenTimeout, "breaker-open", breaker.DefaultOpenTimeout, "how long an open breaker refuses calls before letting probes through")
	fs.IntVar(&c.Breaker.HalfOpenProbes, "breaker-probes", breaker.DefaultHalfOpenProbes, "probe calls that must all succeed to close the breaker again")
	fs.DurationVar(&c.AckWait, "ack-wait", proxy.DefaultAckWait, "a call neither answered nor acknowledged within this is lost with the instance that took it")
}

// check validates the flags after parsing and fills Retry.Retries and
// DisableBreaker.
func (c *callFlags) check() error {
	switch {
	case *c.retries < 0:
		return usagef("--retries %d: use 0 or more", *c.retries)
	case *c.retries == 0:
		c.Retry.Retries = -1
	default:
		c.Retry.Retries = *c.retries
	}
	if c.Retry.BudgetRatio < 0 || c.Retry.BudgetMinPerSecond < 0 {
		return usagef("--retry-budget and --retry-budget-min must not be negative")
	}
	switch *c.breakerOn {
	case "on":
	case "off":
		c.DisableBreaker = true
	default:
		return usagef("--breaker %q: use on or off", *c.breakerOn)
	}
	if c.Breaker.ConsecutiveFailures < 1 || c.Breaker.FailureRatio <= 0 || c.Breaker.FailureRatio > 1 ||
		c.Breaker.MinRequests < 1 || c.Breaker.HalfOpenProbes < 1 {
		return usagef("--breaker-failures, --breaker-min-requests and --breaker-probes must be at least 1, --breaker-ratio above 0 and at most 1")
	}
	return nil
}

// checkMaxBody checks --max-body.
func checkMaxBody(n int64) error {
	if n < 1 {
		return usagef("--max-body %d: use 1 or more bytes", n)
	}
	return nil
}

// transport sets the call knobs on tc.
func (c *callFlags) transport(tc *proxy.TransportConfig) {
	tc.Retry, tc.Breaker, tc.DisableBreaker, tc.AckWait = c.Retry, c.Breaker, c.DisableBreaker, c.AckWait
}
