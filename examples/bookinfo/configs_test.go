package bookinfo_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/config"
	"github.com/natsmesh/natsmesh/examples/bookinfo"
	"github.com/natsmesh/natsmesh/internal/meshtest"
	"github.com/natsmesh/natsmesh/proxy"
)

// fileConfigs is a proxy.ConfigSource holding the documents of config
// files, as `natsmesh apply -f` would have stored them.
type fileConfigs map[string]*config.Service

var _ proxy.ConfigSource = fileConfigs(nil)

func (f fileConfigs) Watch(_ context.Context, service string, apply func(*config.Service, uint64)) (func(), error) {
	if doc := f[service]; doc != nil {
		apply(doc, 1)
	} else {
		apply(nil, 0)
	}
	return func() {}, nil
}

func loadConfigs(t *testing.T, files ...string) fileConfigs {
	t.Helper()
	out := fileConfigs{}
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		docs, err := config.Parse(file, data)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range docs {
			out[d.Service] = d
		}
	}
	return out
}

var servedBy = regexp.MustCompile(`Reviews served by (reviews-v\d)`)

// reviewsVersions fetches the page n times and counts the reviews versions
// that served it.
func reviewsVersions(t *testing.T, productpage *app, query string, n int) map[string]int {
	t.Helper()
	page(t, productpage, query, nil) // the mesh is up
	seen := map[string]int{}
	for range n {
		_, body := get(t, productpage.URL+"/productpage"+query, nil)
		m := servedBy.FindStringSubmatch(body)
		if m == nil {
			t.Fatalf("no reviews version on the page:\n%s", body)
		}
		seen[m[1]]++
	}
	return seen
}

var allReviews = []string{"ratings", "details", "reviews:v1", "reviews:v2", "reviews:v3", "productpage"}

func TestConfigReviewsV1(t *testing.T) {
	t.Parallel()
	apps := bookinfoMeshWith(t, loadConfigs(t, "reviews-v1.yaml"), allReviews...)
	for _, q := range []string{"", "?u=jason"} {
		if seen := reviewsVersions(t, apps["productpage"], q, 10); seen["reviews-v1"] != 10 {
			t.Errorf("productpage%s: reviews versions %v, want v1 only", q, seen)
		}
	}
}

func TestConfigReviewsJasonV2(t *testing.T) {
	t.Parallel()
	apps := bookinfoMeshWith(t, loadConfigs(t, "reviews-jason-v2.yaml"), allReviews...)
	if seen := reviewsVersions(t, apps["productpage"], "?u=jason", 10); seen["reviews-v2"] != 10 {
		t.Errorf("jason: reviews versions %v, want v2 only", seen)
	}
	if seen := reviewsVersions(t, apps["productpage"], "", 10); seen["reviews-v1"] != 10 {
		t.Errorf("anonymous: reviews versions %v, want v1 only", seen)
	}
}

func TestConfigReviewsV3Canary(t *testing.T) {
	t.Parallel()
	apps := bookinfoMeshWith(t, loadConfigs(t, "reviews-v3-canary.yaml"), allReviews...)
	seen := reviewsVersions(t, apps["productpage"], "", 40) // both turn up but with probability 2⁻³⁹
	if seen["reviews-v1"] == 0 || seen["reviews-v3"] == 0 || seen["reviews-v2"] != 0 {
		t.Errorf("reviews versions %v, want v1 and v3", seen)
	}
}

func TestConfigRatingsDelay(t *testing.T) {
	t.Parallel()
	apps := bookinfoMeshWith(t, loadConfigs(t, "reviews-jason-v2.yaml", "ratings-delay.yaml"), allReviews...)
	pp := apps["productpage"]
	page(t, pp, "", nil)
	// Half of jason's pages wait for a delayed ratings, longer than
	// productpage waits for reviews.
	want := fmt.Sprintf("reviews are currently unavailable (no answer within %s)", bookinfo.ProductPageTimeout)
	meshtest.CheckFor(t, 10*time.Second, time.Millisecond, func() error {
		_, body := get(t, pp.URL+"/productpage?u=jason", nil)
		if !strings.Contains(body, want) {
			return errors.New("no timeout yet")
		}
		return nil
	})
	// Nobody else calls ratings: v1 has no stars.
	if seen := reviewsVersions(t, pp, "", 5); seen["reviews-v1"] != 5 {
		t.Errorf("anonymous: reviews versions %v", seen)
	}
}

// TestConfigFilesSayHowToApplyThem keeps each file's comment header true.
func TestConfigFilesSayHowToApplyThem(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("*.yaml")
	if err != nil || len(files) < 4 {
		t.Fatalf("config files: %v %v", files, err)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if cmd := fmt.Sprintf("#   natsmesh apply -f examples/bookinfo/%s\n", f); !strings.Contains(string(data), cmd) {
			t.Errorf("%s does not say %q", f, cmd)
		}
	}
}
