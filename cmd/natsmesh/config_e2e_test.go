//go:build unix

package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/config"
	"github.com/natsmesh/natsmesh/internal/meshtest"
	"github.com/natsmesh/natsmesh/registry"
)

// configFile writes a config file for a test and returns its path.
func configFile(t *testing.T, name, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(strings.TrimLeft(text, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// mustRun runs a natsmesh command that must succeed and returns its stdout.
func mustRun(t *testing.T, args ...string) (stdout, stderr string) {
	t.Helper()
	stdout, stderr, code := natsmesh(t, args...)
	if code != 0 {
		t.Fatalf("natsmesh %s exited %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, stdout, stderr)
	}
	return stdout, stderr
}

// revisionIn returns the number the first submatch of re finds in out.
func revisionIn(t *testing.T, re, out string) string {
	t.Helper()
	m := regexp.MustCompile(re).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("output does not match %q:\n%s", re, out)
	}
	return m[1]
}

const reviewsConfig = `
service: reviews
timeout: 2s
routes:
  - name: canary
    split:
      v1: 90
      v2: 10
---
service: ratings
retries:
  attempts: 3
`

// apply, get, history, rollback and delete with the real binary against
// natsmesh server, as a user runs them.
func TestEndToEndConfig(t *testing.T) {
	t.Parallel()
	_, natsURL := startServer(t)
	nc, err := bus.Connect(bus.ConnectConfig{URL: natsURL, Name: t.Name(), CredsFile: adminCreds(natsURL)})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	// One instance of reviews serves subset v1, none v2.
	a, err := registry.NewAnnouncer(nc, registry.AnnouncerConfig{Service: "reviews", Subset: "v1", Instance: "reviews-v1-a", Interval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Stop()
	meshtest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		insts, err := instancesOf(t, natsURL, "reviews")
		if err != nil || len(insts) != 1 {
			return fmt.Errorf("registry lists %d instances of reviews (%v); want 1", len(insts), err)
		}
		return nil
	})

	file := configFile(t, "mesh.yaml", reviewsConfig)
	out, errOut := mustRun(t, "apply", "-f", file, "--nats", natsURL)
	rev1 := revisionIn(t, `(?m)^reviews: applied revision (\d+)$`, out)
	revisionIn(t, `(?m)^ratings: applied revision (\d+)$`, out)
	wantWarn := "warning: reviews: route canary sends traffic to subset v2, which no running instance serves (start one with natsmesh sidecar --service reviews --subset v2)\n"
	if errOut != wantWarn {
		t.Errorf("apply stderr:\n%s\nwant exactly the warning for v2:\n%s", errOut, wantWarn)
	}

	t.Run("unchanged", func(t *testing.T) {
		out, _ := mustRun(t, "apply", "-f", file, "--nats", natsURL)
		if !strings.Contains(out, "reviews: unchanged (revision "+rev1+")\n") || !strings.Contains(out, "ratings: unchanged (revision ") {
			t.Errorf("second apply printed:\n%s\nwant both unchanged", out)
		}
	})

	t.Run("get", func(t *testing.T) {
		out, _ := mustRun(t, "config", "get", "reviews", "--nats", natsURL)
		if !regexp.MustCompile(`^# reviews: revision `+rev1+`, \d{4}-\d\d-\d\dT`).MatchString(out) ||
			!strings.Contains(out, "timeout: 2s\n") || !strings.Contains(out, "      v2: 10\n") {
			t.Errorf("config get reviews printed:\n%s", out)
		}
		js, _ := mustRun(t, "config", "get", "reviews", "--json", "--nats", natsURL)
		if !strings.Contains(js, `"revision":`+rev1) || !strings.Contains(js, `"config":{"service":"reviews","timeout":"2s"`) {
			t.Errorf("config get reviews --json printed:\n%s", js)
		}
		// What get prints for every service can be applied back as it is.
		all, _ := mustRun(t, "config", "get", "--nats", natsURL)
		if !strings.Contains(all, "\n---\n") || !strings.Contains(all, "service: ratings") || !strings.Contains(all, "service: reviews") {
			t.Errorf("config get printed:\n%s", all)
		}
		back, _ := mustRun(t, "apply", "-f", configFile(t, "all.yaml", all), "--nats", natsURL)
		if strings.Count(back, "unchanged") != 2 {
			t.Errorf("applying what config get printed:\n%s\nwant both unchanged", back)
		}
	})

	t.Run("invalid file", func(t *testing.T) {
		bad := configFile(t, "bad.yaml", `
service: reviews
timeout: 3s
routes:
  - split:
      v1: 90
      v2: 20
---
service: ratings
retries:
  attempts: 3
  backof: 1s
`)
		out, errOut, code := natsmesh(t, "apply", "-f", bad, "--nats", natsURL)
		want := bad + ":4: service reviews: routes[0].split: weights add up to 110; they must add up to 100\n" +
			bad + `:11: service ratings: retries.backof: unknown field "backof"; the fields here are attempts, on, perTryTimeout, backoff, backoffMax, budget` + "\n" +
			"natsmesh apply: 2 problems in " + bad + "; nothing was applied\n"
		if code != 1 || out != "" || errOut != want {
			t.Errorf("apply of an invalid file: exit %d\nstdout:\n%s\nstderr:\n%s\nwant exit 1 and stderr:\n%s", code, out, errOut, want)
		}
		got, _ := mustRun(t, "config", "get", "reviews", "--nats", natsURL)
		if !strings.Contains(got, "revision "+rev1+",") || !strings.Contains(got, "timeout: 2s") {
			t.Errorf("after the invalid apply, reviews is:\n%s\nwant revision %s, unchanged", got, rev1)
		}
	})

	t.Run("history rollback delete", func(t *testing.T) {
		v2 := configFile(t, "v2.yaml", "service: reviews\ntimeout: 5s\nroutes:\n  - split: {v1: 100}\n")
		out, _ := mustRun(t, "apply", "-f", v2, "--nats", natsURL)
		rev2 := revisionIn(t, `reviews: applied revision (\d+)`, out)

		out, _ = mustRun(t, "config", "history", "reviews", "--nats", natsURL)
		if !regexp.MustCompile(`(?m)^REVISION\s+TIME\s+OPERATION\n` + rev1 + `\s+\S+\s+put\n` + rev2 + `\s+\S+\s+put\n$`).MatchString(out) {
			t.Errorf("config history reviews printed:\n%s\nwant revisions %s and %s, put", out, rev1, rev2)
		}

		out, _ = mustRun(t, "config", "rollback", "reviews", rev1, "--nats", natsURL)
		rev3 := revisionIn(t, `^reviews: rolled back to revision `+rev1+` as revision (\d+)\n$`, out)
		got, _ := mustRun(t, "config", "get", "reviews", "--nats", natsURL)
		if !strings.Contains(got, "revision "+rev3+",") || !strings.Contains(got, "timeout: 2s") || !strings.Contains(got, "v2: 10") {
			t.Errorf("after rollback, reviews is:\n%s\nwant revision %s's document at %s", got, rev1, rev3)
		}

		out, _ = mustRun(t, "config", "delete", "reviews", "--nats", natsURL)
		rev4 := revisionIn(t, `^reviews: deleted \(revision (\d+)\); `+"`natsmesh config rollback reviews "+rev3+"` brings it back\n$", out)
		out, errOut, code := natsmesh(t, "config", "get", "reviews", "--nats", natsURL)
		if want := "natsmesh config get: no config for service reviews; `natsmesh config get` lists those that have one\n"; code != 1 || out != "" || errOut != want {
			t.Errorf("config get after delete: exit %d, stdout %q, stderr %q; want 1 and %q", code, out, errOut, want)
		}
		out, _ = mustRun(t, "config", "history", "reviews", "--json", "--nats", natsURL)
		if !strings.Contains(out, `"revision":`+rev4+`,`) || !strings.Contains(out, `"operation":"delete"`) {
			t.Errorf("config history --json after delete:\n%s", out)
		}
		_, errOut, code = natsmesh(t, "config", "rollback", "reviews", rev4, "--nats", natsURL)
		if code != 1 || !strings.Contains(errOut, "revision "+rev4+" of reviews is a delete") {
			t.Errorf("rollback to the delete: exit %d, stderr %q", code, errOut)
		}
		// Applied again after the delete.
		out, _ = mustRun(t, "apply", "-f", v2, "--nats", natsURL)
		revisionIn(t, `reviews: applied revision (\d+)`, out)
	})

	t.Run("errors", func(t *testing.T) {
		if _, errOut, code := natsmesh(t, "config", "frob"); code != 2 || !strings.HasPrefix(errOut, `natsmesh config: unknown command "frob"`) || !strings.Contains(errOut, "Usage: natsmesh config") {
			t.Errorf("natsmesh config frob: exit %d, stderr %q; want 2, the unknown command and the usage", code, errOut)
		}
		for _, tc := range []struct {
			args []string
			code int
			want string
		}{
			{[]string{"config", "get", "Bad.Name"}, 2, `natsmesh config get: service name "Bad.Name" has 'B' at position 1`},
			{[]string{"config", "history", "nope"}, 1, "natsmesh config history: service nope has no config history"},
			{[]string{"config", "rollback", "ratings", "999999"}, 1, "natsmesh config rollback: revision 999999 is not kept"},
			{[]string{"config", "rollback", "ratings", rev1}, 1, "natsmesh config rollback: revision " + rev1 + " belongs to service reviews, not ratings"},
			{[]string{"config", "rollback", "ratings", "latest"}, 2, `REVISION "latest" is not a revision number`},
			{[]string{"config", "delete", "nope"}, 1, "natsmesh config delete: no config for service nope"},
			{[]string{"config", "get", "--prefix", "staging"}, 1, "has no config bucket staging_config; run `natsmesh server --prefix staging`"},
		} {
			out, errOut, code := natsmesh(t, append(tc.args, "--nats", natsURL)...)
			if code != tc.code || !strings.Contains(errOut, tc.want) || strings.Count(errOut, "\n") != 1 {
				t.Errorf("natsmesh %s: exit %d, stdout %q, stderr %q; want exit %d and one line with %q", strings.Join(tc.args, " "), code, out, errOut, tc.code, tc.want)
			}
		}
	})
}

// runNATSWithoutJetStream starts a plain NATS server with no JetStream.
func runNATSWithoutJetStream(t *testing.T) string {
	t.Helper()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("NATS server did not start")
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return ns.ClientURL()
}

// The commands say what is missing when NATS, JetStream, the bucket or the
// registry is not there.
func TestEndToEndConfigWithoutServer(t *testing.T) {
	t.Parallel()
	file := configFile(t, "mesh.yaml", reviewsConfig)

	noJS := runNATSWithoutJetStream(t)
	wantNoJS := "the NATS server at " + noJS + " has no JetStream; start it with JetStream enabled (natsmesh server does) to store config\n"
	for _, tc := range []struct {
		args []string
		cmd  string
	}{{[]string{"apply", "-f", file}, "apply"}, {[]string{"config", "get"}, "config get"}} {
		_, errOut, code := natsmesh(t, append(tc.args, "--nats", noJS)...)
		if want := "natsmesh " + tc.cmd + ": " + wantNoJS; code != 1 || errOut != want {
			t.Errorf("%s without JetStream: exit %d, stderr %q; want 1 and %q", tc.cmd, code, errOut, want)
		}
	}

	_, errOut, code := natsmesh(t, "config", "history", "reviews", "--nats", "nats://"+freeAddr(t))
	if code != 1 || !strings.Contains(errOut, "cannot connect to NATS") {
		t.Errorf("config history with no NATS: exit %d, stderr %q", code, errOut)
	}

	// JetStream but no bucket and no registry: apply (an admin's) makes
	// the bucket; the subsets are not checked, and apply says so.
	srv := meshtest.RunServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	out, errOut := mustRun(t, "apply", "-f", file, "--nats", srv.ClientURL())
	if !strings.Contains(errOut, "warning: the registry did not answer") || !strings.Contains(errOut, "was skipped") || !strings.Contains(out, "reviews: applied revision") {
		t.Errorf("apply without the bucket or a registry: stdout %q, stderr %q; want it applied, with the check skipped", out, errOut)
	}
	st, err := config.OpenStore(ctx, nc, "")
	if err != nil {
		t.Fatalf("the bucket apply made: %v", err)
	}
	if kept, err := st.HistoryKept(ctx); err != nil || kept != config.History {
		t.Errorf("the bucket apply made keeps %d revisions (%v), want %d", kept, err, config.History)
	}
}

func TestConfigHelpTexts(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args  []string
		flags []string
		words []string
	}{
		{args: []string{"--help"}, words: []string{"apply", "config"}},
		{args: []string{"apply", "--help"}, flags: []string{"f", "nats", "prefix", "timeout"}, words: []string{"compare-and-set", "nothing is applied", "subset"}},
		{args: []string{"config", "--help"}, words: []string{"get [NAME]", "history NAME", "rollback NAME REVISION", "delete NAME"}},
		{args: []string{"config", "get", "--help"}, flags: []string{"json", "nats"}, words: []string{"YAML"}},
		{args: []string{"config", "history", "--help"}, flags: []string{"json"}, words: []string{"revisions"}},
		{args: []string{"config", "rollback", "--help"}, flags: []string{"nats"}, words: []string{"new revision"}},
		{args: []string{"config", "delete", "--help"}, flags: []string{"nats"}, words: []string{"defaults"}},
	} {
		out, errOut, code := natsmesh(t, tc.args...)
		help := out + errOut
		if code != 0 {
			t.Errorf("%s: exit %d, want 0", tc.args, code)
		}
		for _, f := range tc.flags {
			if !regexp.MustCompile(`(?m)^\s+--` + regexp.QuoteMeta(f) + `\b`).MatchString(help) {
				t.Errorf("%s does not list --%s:\n%s", tc.args, f, help)
			}
		}
		for _, w := range tc.words {
			if !strings.Contains(help, w) {
				t.Errorf("%s does not mention %q:\n%s", tc.args, w, help)
			}
		}
	}
}
