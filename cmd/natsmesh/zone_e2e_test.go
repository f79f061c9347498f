package main

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/internal/meshtest"
	"github.com/natsmesh/natsmesh/registry"
)

// A zone that is not a valid name is a usage error, before anything starts.
func TestZoneFlagRefusesBadNames(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"sidecar", "--service", "a", "--upstream", "http://127.0.0.1:1"},
		{"gateway", "--route", "/=a"},
	} {
		for _, zone := range []string{"BAD", "eu.1", "*"} {
			_, stderr, code := natsmesh(t, append(args, "--zone", zone)...)
			if code != 2 || !strings.Contains(stderr, "--zone") {
				t.Errorf("%s --zone %s: exit %d, stderr %q; want a usage error (2) naming --zone", args[0], zone, code, stderr)
			}
		}
	}
}

// natsmesh instances shows each instance's zone, in its table and its JSON.
func TestInstancesShowZone(t *testing.T) {
	t.Parallel()
	_, natsURL := startServer(t)
	_, app := startApp(t, "zoned")
	startSidecar(t, natsURL, "zoned", "zoned-a", app, "--zone", "eu-1")
	startSidecar(t, natsURL, "zoned", "zoned-n", app)
	row := regexp.MustCompile(`(?m)^zoned-a\s+-\s+passing\s.*\seu-1$`)
	meshtest.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		out, errOut, code := natsmesh(t, "instances", "zoned", "--nats", natsURL)
		if code != 0 || !strings.Contains(out, "ZONE") || !row.MatchString(out) || !regexp.MustCompile(`(?m)^zoned-n\s+-\s+passing\s.*\s-$`).MatchString(out) {
			return fmt.Errorf("exit %d:\n%s%s", code, out, errOut)
		}
		return nil
	})
	out, errOut, code := natsmesh(t, "instances", "zoned", "--json", "--nats", natsURL)
	var snap registry.Snapshot
	if code != 0 || json.Unmarshal([]byte(out), &snap) != nil {
		t.Fatalf("--json: exit %d:\n%s%s", code, out, errOut)
	}
	zones := map[string]string{}
	for _, in := range snap.Services["zoned"] {
		zones[in.Instance] = in.Zone
	}
	if zones["zoned-a"] != "eu-1" || zones["zoned-n"] != "" || !strings.Contains(out, `"zone":"eu-1"`) {
		t.Errorf("--json zones %v:\n%s", zones, out)
	}
}
