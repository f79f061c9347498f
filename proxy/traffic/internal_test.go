package traffic

import (
	"fmt"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/breaker"
	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/config"
)

// The tests here check what a compiled policy keeps but does not show: the
// black-box tests (policy_test.go, retry_test.go) check all they can
// through the exported API, and name the test here that checks the rest.

func parseDoc(t testing.TB, yaml string) *config.Service {
	t.Helper()
	docs, err := config.Parse("test.yaml", []byte(yaml))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	return docs[0]
}

var testSubjects = bus.Subjects{Prefix: "mesh"}

// A route's split is a table of cumulative weights over its subsets sorted
// by name, whatever the order of the document's map; a subset of weight 0
// has no place in it. (The rest of TestCompileRoutes, policy_test.go:
// Route's shares show the weights, not the table.)
func TestCompileRoutesTables(t *testing.T) {
	t.Parallel()
	base := &Base{Retry: RetryPolicy{}.WithDefaults()}
	p := Compile(testSubjects, "reviews", parseDoc(t, `
service: reviews
routes:
  - name: zero
    match: {pathPrefix: /zero}
    split: {v1: 0, v2: 100}
  - split: {v2: 10, v1: 90}
`), 7, base, nil)
	if len(p.routes) != 2 {
		t.Fatalf("compiled %d routes", len(p.routes))
	}
	last := p.routes[1]
	if got := fmt.Sprint(last.cum); got != "[90 100]" {
		t.Errorf("cumulative weights of {v2: 10, v1: 90} = %s, want [90 100] (subsets by name)", got)
	}
	if len(last.targets) != 2 || last.targets[0].Subset != "v1" || last.targets[1].Subset != "v2" {
		t.Errorf("subsets %v, want v1 then v2", last.targets)
	}
	if z := p.routes[0]; len(z.targets) != 1 || z.targets[0].Subset != "v2" {
		t.Errorf("a subset of weight 0 is kept: %+v", z.targets)
	}
}

// The cumulative table turns every number in [0, 100) into the subset its
// weight says. (TestRouteWeights, policy_test.go, checks Route's shares.)
func TestRoutePickWeights(t *testing.T) {
	t.Parallel()
	base := &Base{Retry: RetryPolicy{}.WithDefaults()}
	p := Compile(testSubjects, "reviews", parseDoc(t, "service: reviews\nroutes:\n  - split: {c: 25, a: 5, b: 70}\n"), 1, base, nil)
	r := &p.routes[0]
	counts := map[string]int{}
	for n := 0; n < 100; n++ {
		counts[r.pick(n).Subset]++
	}
	if counts["a"] != 5 || counts["b"] != 70 || counts["c"] != 25 {
		t.Fatalf("picks over 0..99 = %v, want a 5, b 70, c 25", counts)
	}
}

// The backoff and breaker ratio a document sets over the flags'. (The rest
// of TestCompileOverrides, policy_test.go: Retrier.Next shows the backoff
// only within its jitter, and a breaker's ratio cannot be reached exactly
// without tripping its consecutive failures first.)
func TestCompileOverridesSettings(t *testing.T) {
	t.Parallel()
	base := &Base{
		Timeout: 15 * time.Second,
		Retry:   RetryPolicy{Retries: 4, PerTryTimeout: time.Second, BudgetRatio: 0.5}.WithDefaults(),
		Breaker: breaker.Settings{ConsecutiveFailures: 7, OpenTimeout: 9 * time.Second},
	}
	p := Compile(testSubjects, "reviews", parseDoc(t, `
service: reviews
retries:
  backoff: 100ms
breaker:
  ratio: 0.9
`), 3, base, nil)
	if p.retry.BackoffBase != 100*time.Millisecond || p.retry.BackoffMax != 250*time.Millisecond {
		t.Errorf("backoff %s..%s", p.retry.BackoffBase, p.retry.BackoffMax)
	}
	if p.breakerKey.failures != 7 || p.breakerKey.ratio != 0.9 {
		t.Errorf("breaker %+v", p.breakerKey)
	}
}

// A policy keeps a bounded number of budgets. (The rest of
// TestDestinationsPerService, retry_test.go.)
func TestDestinationsBounded(t *testing.T) {
	t.Parallel()
	p := Defaults(&Base{Retry: RetryPolicy{BudgetRatio: 0.2, BudgetMinPerSecond: -1}.WithDefaults()}, 4)
	for _, svc := range []string{"a", "b", "c", "d", "e", "f", "g"} {
		p.Destination(svc)
	}
	p.dests.budgets.mu.Lock()
	n := len(p.dests.budgets.m)
	p.dests.budgets.mu.Unlock()
	if n > 4 {
		t.Fatalf("%d budgets kept, want at most 4", n)
	}
}
