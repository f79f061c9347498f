//go:build unix

package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/internal/meshtest"
)

// readmeBlock returns the shell lines of the ```sh block that follows marker
// in README.md, without comments.
func readmeBlock(t *testing.T, readme, marker string) []string {
	t.Helper()
	i := strings.Index(readme, marker)
	if i < 0 {
		t.Fatalf("README.md has no %q block", marker)
	}
	rest := readme[i:]
	start := strings.Index(rest, "```sh\n")
	end := strings.Index(rest[start+6:], "```")
	if start < 0 || end < 0 {
		t.Fatalf("README.md: no ```sh block after %q", marker)
	}
	var lines []string
	for _, l := range strings.Split(rest[start+6:start+6+end], "\n") {
		if l = strings.TrimSpace(stripComment(l)); l != "" {
			lines = append(lines, l)
		}
	}
	return lines
}

// stripComment drops a trailing "  # ..." shell comment outside quotes.
func stripComment(l string) string {
	if i := strings.Index(l, " #"); i >= 0 && strings.Count(l[:i], "'")%2 == 0 {
		return l[:i]
	}
	return l
}

// TestReadmeTour runs README.md's commands as a user would, from the
// repository's root: the first set-up command (the server), the block that
// puts two apps on the mesh, and each command of the block that calls them.
// They use the README's fixed ports, so the test needs them free.
func TestReadmeTour(t *testing.T) {
	if testing.Short() {
		t.Skip("runs README commands, which build binaries; skipped with -short")
	}
	for _, p := range []string{"4222", "9080", "8080", "8081", "8082", "15001", "15002", "15003", "15004", "15005", "15090"} {
		l, err := net.Listen("tcp", "127.0.0.1:"+p)
		if err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("port %s, which README.md's commands use, is taken: %v", p, err)
			}
			t.Skipf("port %s, which README.md's commands use, is taken here", p)
		}
		l.Close()
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	readme := string(raw)
	setup := readmeBlock(t, readme, "# natsmesh")
	if len(setup) != 2 || setup[0] != "go run ./cmd/natsmesh demo" || !strings.HasPrefix(setup[1], "go test") {
		t.Fatalf("README.md should open with the two commands (run the demo, run the tests), got %q", setup)
	}
	serverBlock := readmeBlock(t, readme, "<!-- readme-test: server -->")
	if len(serverBlock) != 1 || !strings.HasPrefix(serverBlock[0], "go run ./cmd/natsmesh server") {
		t.Fatalf("README.md's server block changed (%q); update this test", serverBlock)
	}
	startBlock := readmeBlock(t, readme, "<!-- readme-test: start -->")
	tryBlock := readmeBlock(t, readme, "<!-- readme-test: try -->")
	metricsBlock := readmeBlock(t, readme, "<!-- readme-test: metrics -->")
	scaleBlock := readmeBlock(t, readme, "<!-- readme-test: scale -->")
	trafficBlock := readmeBlock(t, readme, "<!-- readme-test: traffic -->")
	libraryBlock := readmeBlock(t, readme, "<!-- readme-test: library -->")
	securityBlock := readmeBlock(t, readme, "<!-- readme-test: security -->")
	clusterBlock := readmeBlock(t, readme, "<!-- readme-test: cluster -->")
	if len(libraryBlock) != 1 {
		t.Fatalf("README.md's library block has %d commands; this test knows 1", len(libraryBlock))
	}

	goCmd, err := goTool()
	if err != nil {
		t.Fatal(err)
	}
	env := append(childEnv(), "XDG_STATE_HOME="+t.TempDir(), "PATH="+filepath.Dir(goCmd)+":"+os.Getenv("PATH"))

	readmeDemoTour(t, root, env, readme, setup[0])

	script := "set -e\n" + serverBlock[0] + " &\n" +
		"for i in $(seq 300); do (echo > /dev/tcp/127.0.0.1/4222) 2>/dev/null && break; sleep 0.1; done\n" +
		strings.Join(startBlock, "\n") + "\nwait\n"
	runBackground(t, root, env, script)

	want := []*regexp.Regexp{
		regexp.MustCompile(`web asked greeter and got 200 OK from instance greeter-[0-9a-f]+: hello from greeter \(called by web\)`),
		regexp.MustCompile(`hello from greeter \(called by web\)`),
		regexp.MustCompile(`hello from greeter \(called by a client outside the mesh\)`),
		regexp.MustCompile(`(?m)^greeter +1 +1 +0 +0 +0 *$`),
		regexp.MustCompile(`(?m)^greeter-[0-9a-f]+ +v1 +passing +0 `),
	}
	if len(tryBlock) != len(want) {
		t.Fatalf("README.md's try block has %d commands; this test knows %d", len(tryBlock), len(want))
	}
	for i, line := range tryBlock {
		meshtest.CheckFor(t, 90*time.Second, 200*time.Millisecond, runMatching(root, env, line, want[i]))
	}

	// A Go program on the mesh with no sidecar serves and calls.
	meshtest.CheckFor(t, 90*time.Second, 200*time.Millisecond, runMatching(root, env, libraryBlock[0],
		regexp.MustCompile(`(?m)^200 OK hello library, from hello-library$`)))

	// See your traffic: web's sidecar serves the calls it made to
	// Prometheus, and natsmesh top has them once the stats are published.
	wantMetrics := []*regexp.Regexp{
		regexp.MustCompile(`(?m)^natsmesh_requests_total\{[^}]*callee="greeter"[^}]*status_class="2xx"[^}]*\} [1-9]`),
		regexp.MustCompile(`(?s)"edges":.*"from":\s*"web",\s*"to":\s*"greeter"`),
	}
	if len(metricsBlock) != len(wantMetrics) {
		t.Fatalf("README.md's metrics block has %d commands; this test knows %d", len(metricsBlock), len(wantMetrics))
	}
	for i, line := range metricsBlock {
		meshtest.CheckFor(t, 30*time.Second, 500*time.Millisecond, runMatching(root, env, line, wantMetrics[i]))
	}

	// Watch instances come and go: the background lines run together, then
	// instances lists three, the kill -9 happens, and watch reports it.
	var bg, fg []string
	for _, line := range scaleBlock {
		if strings.HasSuffix(line, "&") {
			bg = append(bg, line)
		} else {
			fg = append(fg, line)
		}
	}
	if len(bg) != 3 || len(fg) != 2 || !strings.Contains(fg[0], "instances greeter") || !strings.HasPrefix(fg[1], "pkill") {
		t.Fatalf("README.md's scale block changed (%q); update this test", scaleBlock)
	}
	watch := runBackground(t, root, env, strings.Join(bg, "\n")+"\nwait\n")
	meshtest.CheckFor(t, 30*time.Second, 200*time.Millisecond, runMatching(root, env, fg[0],
		regexp.MustCompile(`(?ms)^greeter-[0-9a-f]+ +\S+ +passing.*^greeter-[0-9a-f]+ +\S+ +passing.*^greeter-[0-9a-f]+ +\S+ +passing`)))
	meshtest.CheckFor(t, 10*time.Second, 100*time.Millisecond, func() error {
		// Each instance is either in watch's first snapshot or an up event,
		// depending on whether it registered before watch started.
		ids := map[string]bool{}
		for _, m := range regexp.MustCompile(`greeter (greeter-[0-9a-f]+)`).FindAllStringSubmatch(watch.String(), -1) {
			ids[m[1]] = true
		}
		if len(ids) < 3 {
			return fmt.Errorf("watch has shown %d greeter instances, want 3:\n%s", len(ids), watch)
		}
		return nil
	})
	if err := runMatching(root, env, fg[1], regexp.MustCompile(``))(); err != nil {
		t.Fatal(err)
	}
	meshtest.CheckFor(t, 10*time.Second, 100*time.Millisecond, func() error {
		if !regexp.MustCompile(`down +greeter greeter-[0-9a-f]+ \(expired`).MatchString(watch.String()) {
			return fmt.Errorf("watch has not printed the killed instance expiring:\n%s", watch)
		}
		return nil
	})

	// Traffic management: a v2 greeter, the canary applied and seen in
	// effect, then a new revision, the history and a rollback.
	bg, fg = nil, nil
	for _, line := range trafficBlock {
		if strings.HasSuffix(line, "&") {
			bg = append(bg, line)
		} else {
			fg = append(fg, line)
		}
	}
	wantTraffic := []*regexp.Regexp{
		regexp.MustCompile(`(?m)^greeter: applied revision 1$`),
		regexp.MustCompile(`hello from greeter-v2 \(called by web\)`),
		regexp.MustCompile(`(?s)# greeter: revision 1,.*x-user: jason.*v1: 90`),
		regexp.MustCompile(`(?m)^greeter: applied revision 2$`),
		regexp.MustCompile(`(?ms)^1 .*put.*^2 .*put`),
		regexp.MustCompile(`greeter: rolled back to revision 1 as revision 3`),
	}
	if len(bg) != 2 || len(fg) != len(wantTraffic) {
		t.Fatalf("README.md's traffic block changed (%q); update this test", trafficBlock)
	}
	runBackground(t, root, env, strings.Join(bg, "\n")+"\nwait\n")
	meshtest.CheckFor(t, 30*time.Second, 200*time.Millisecond, runMatching(root, env, "bin/natsmesh instances greeter",
		regexp.MustCompile(`(?m)^greeter-[0-9a-f]+ +v2 +passing `)))
	for i, line := range fg {
		if strings.Contains(line, " apply ") || strings.Contains(line, " rollback ") {
			// Writes run once: each makes a revision.
			if err := runMatching(root, env, line, wantTraffic[i])(); err != nil {
				t.Fatal(err)
			}
			continue
		}
		meshtest.CheckFor(t, 10*time.Second, 100*time.Millisecond, runMatching(root, env, line, wantTraffic[i]))
	}
	readmeSecurity(t, root, env, securityBlock)
	readmeCluster(t, root, env, clusterBlock)
}

// readmeCluster runs "Running on several machines": three clustered
// servers on loopback, and the registry answering through them.
func readmeCluster(t *testing.T, root string, env, block []string) {
	t.Helper()
	if len(block) != 5 || !strings.HasPrefix(block[0], "R=") || !strings.Contains(block[4], " services ") {
		t.Fatalf("README.md's cluster block changed (%q); update this test", block)
	}
	dirs := []string{"n1", "n2", "n3"}
	clean := func() {
		for _, d := range dirs {
			_ = os.RemoveAll(filepath.Join(root, "bin", d))
		}
	}
	clean()
	t.Cleanup(clean)
	runBackground(t, root, env, strings.Join(block[:4], "\n")+"\nwait\n")
	meshtest.CheckFor(t, 60*time.Second, 300*time.Millisecond, runMatching(root, env, block[4],
		regexp.MustCompile(`(?m)^SERVICE\s+INSTANCES`)))
}

// readmeSecurity runs the Security section: an identity issued, a sidecar
// on it, callers applied, the allowed call and the refused one.
func readmeSecurity(t *testing.T, root string, env, block []string) {
	t.Helper()
	var bg, fg []string
	for _, line := range block {
		if strings.HasSuffix(line, "&") {
			bg = append(bg, line)
		} else {
			fg = append(fg, line)
		}
	}
	want := []*regexp.Regexp{
		regexp.MustCompile(`greeter: service identity written to .*bin/greeter\.creds`),
		regexp.MustCompile(`(?m)^greeter: applied revision \d+$`),
		regexp.MustCompile(`web asked greeter and got 200 OK`),
		regexp.MustCompile(`service "greeter" does not accept calls from "greeter"`),
	}
	if len(bg) != 2 || len(fg) != len(want) {
		t.Fatalf("README.md's security block changed (%q); update this test", block)
	}
	_ = os.Remove(filepath.Join(root, "bin", "greeter.creds")) // from an earlier run
	t.Cleanup(func() { _ = os.Remove(filepath.Join(root, "bin", "greeter.creds")) })
	if err := runMatching(root, env, fg[0], want[0])(); err != nil {
		t.Fatal(err)
	}
	runBackground(t, root, env, strings.Join(bg, "\n")+"\nwait\n")
	meshtest.CheckFor(t, 30*time.Second, 200*time.Millisecond, runMatching(root, env, "bin/natsmesh instances greeter",
		regexp.MustCompile(`(?m)^greeter-[0-9a-f]+ +v3 +passing `)))
	if err := runMatching(root, env, fg[1], want[1])(); err != nil {
		t.Fatal(err)
	}
	for i, line := range fg[2:] {
		meshtest.CheckFor(t, 10*time.Second, 100*time.Millisecond, runMatching(root, env, line, want[i+2]))
	}
}

// runMatching returns a check that runs a README line and wants it to exit 0
// with output matching re.
func runMatching(root string, env []string, line string, re *regexp.Regexp) func() error {
	return func() error {
		c := exec.Command("bash", "-c", line)
		c.Dir = root
		c.Env = env
		got, err := c.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s: %v: %s", line, err, got)
		}
		if !re.Match(got) {
			return fmt.Errorf("%s printed %q, want it to match %s", line, got, re)
		}
		return nil
	}
}

// runBackground runs a script of README lines in a process group of its
// own, removed with everything it started when the test ends.
func runBackground(t *testing.T, root string, env []string, script string) *output {
	t.Helper()
	out := newOutput()
	cmd := exec.Command("bash", "-c", script)
	cmd.Dir = root
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		if t.Failed() {
			t.Logf("output of README commands:\n%s\n%s", script, out.String())
		}
	})
	return out
}

// readmeDemoTour runs the README's first command, the demo, and the tour's
// commands against it, then stops the demo with Ctrl-C and checks that its
// ports are free again.
func readmeDemoTour(t *testing.T, root string, env []string, readme, demoCmd string) {
	t.Helper()
	tour := readmeBlock(t, readme, "<!-- readme-test: tour -->")
	watchBlock := readmeBlock(t, readme, "<!-- readme-test: watch -->")
	want := [][]*regexp.Regexp{
		{regexp.MustCompile(`Reviews served by reviews-v[123]`), regexp.MustCompile(`Details served by instance`)},
		{regexp.MustCompile(`(?m)^reviews +3 +3 `), regexp.MustCompile(`(?m)^productpage +1 +1 `), regexp.MustCompile(`(?m)^details +1 +1 `), regexp.MustCompile(`(?m)^ratings +1 +1 `)},
		{regexp.MustCompile(`(?m)^reviews-[0-9a-f]+ +v1 +passing`), regexp.MustCompile(`(?m)^reviews-[0-9a-f]+ +v2 +passing`), regexp.MustCompile(`(?m)^reviews-[0-9a-f]+ +v3 +passing`)},
		{regexp.MustCompile(`(?m)^reviews: applied revision \d+$`)},
		{regexp.MustCompile(`Reviews served by reviews-v2`)},
		{regexp.MustCompile(`(?m)^reviews: applied revision \d+$`)},
		{regexp.MustCompile(`(?ms)^\d+ .*put.*^\d+ .*put`)},
	}
	if len(tour) != len(want) || len(watchBlock) != 2 {
		t.Fatalf("README.md's tour changed (%q, %q); update this test", tour, watchBlock)
	}
	demo, out := startScript(t, root, env, demoCmd)
	meshtest.CheckFor(t, 120*time.Second, 200*time.Millisecond, func() error {
		if !strings.Contains(out.String(), "open http://127.0.0.1:9080/productpage") {
			return fmt.Errorf("the demo has not said it is ready:\n%s", out)
		}
		return nil
	})
	_, topOut := startScript(t, root, env, watchBlock[0])
	_, watchOut := startScript(t, root, env, watchBlock[1])
	for i, line := range tour {
		check := func() error {
			for _, re := range want[i] {
				if err := runMatching(root, env, line, re)(); err != nil {
					return err
				}
			}
			return nil
		}
		if strings.Contains(line, " apply ") {
			if err := check(); err != nil { // a write runs once
				t.Fatal(err)
			}
			continue
		}
		meshtest.CheckFor(t, 30*time.Second, 200*time.Millisecond, check)
	}
	meshtest.CheckFor(t, 10*time.Second, 100*time.Millisecond, func() error {
		if !regexp.MustCompile(`reviews reviews-[0-9a-f]+`).MatchString(watchOut.String()) {
			return fmt.Errorf("watch has not shown the reviews instances:\n%s", watchOut)
		}
		return nil
	})
	// top shows the demo's own traffic, and the calls to reviews routed
	// to subsets once the tour has applied its configs.
	meshtest.CheckFor(t, 30*time.Second, 200*time.Millisecond, func() error {
		for _, re := range []*regexp.Regexp{regexp.MustCompile(`(?m)^gateway +productpage +[0-9]`), regexp.MustCompile(`(?m)^productpage +reviews/v[123] +[0-9]`)} {
			if !re.MatchString(topOut.String()) {
				return fmt.Errorf("top has not shown %s:\n%s", re, topOut)
			}
		}
		return nil
	})

	// Ctrl-C stops the demo (go run passes the signal on), and frees its
	// ports for the rest of the README.
	_ = syscall.Kill(-demo.Process.Pid, syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- demo.Wait() }()
	select {
	case <-done:
		// go run itself exits 1 after an interrupt, whatever its child
		// did; the demo says it stopped, and nothing of it is left.
	case <-time.After(30 * time.Second):
		t.Fatalf("the demo did not stop within 30 s of Ctrl-C:\n%s", out)
	}
	if !strings.Contains(out.String(), "stopping the demo") || strings.Contains(out.String(), "stopping at once") {
		t.Errorf("the demo did not stop cleanly after Ctrl-C:\n%s", out)
	}
	meshtest.CheckFor(t, 10*time.Second, 100*time.Millisecond, func() error {
		if err := syscall.Kill(-demo.Process.Pid, 0); err != syscall.ESRCH {
			return fmt.Errorf("a process of the demo is still running (%v)", err)
		}
		return nil
	})
	meshtest.CheckFor(t, 10*time.Second, 100*time.Millisecond, func() error {
		for _, p := range []string{"4222", "9080"} {
			l, err := net.Listen("tcp", "127.0.0.1:"+p)
			if err != nil {
				return fmt.Errorf("port %s is still taken after the demo stopped: %v", p, err)
			}
			l.Close()
		}
		return nil
	})
}

// startScript runs a README line in a process group of its own, killed with
// everything it started when the test ends unless it has exited.
func startScript(t *testing.T, root string, env []string, line string) (*exec.Cmd, *output) {
	t.Helper()
	out := newOutput()
	cmd := exec.Command("bash", "-c", "exec "+line)
	cmd.Dir = root
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		if t.Failed() {
			t.Logf("output of %s:\n%s", line, out)
		}
	})
	return cmd, out
}
