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
	for _, p := range []string{"4222", "8080", "8081", "8082", "15001", "15002", "15003", "15004", "15005"} {
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
	if len(setup) != 2 || !strings.HasPrefix(setup[0], "go run ./cmd/natsmesh server") || !strings.HasPrefix(setup[1], "go test") {
		t.Fatalf("README.md should open with the two set-up commands (run the server, run the tests), got %q", setup)
	}
	startBlock := readmeBlock(t, readme, "<!-- readme-test: start -->")
	tryBlock := readmeBlock(t, readme, "<!-- readme-test: try -->")
	scaleBlock := readmeBlock(t, readme, "<!-- readme-test: scale -->")
	trafficBlock := readmeBlock(t, readme, "<!-- readme-test: traffic -->")

	goCmd, err := goTool()
	if err != nil {
		t.Fatal(err)
	}
	env := append(childEnv(), "XDG_STATE_HOME="+t.TempDir(), "PATH="+filepath.Dir(goCmd)+":"+os.Getenv("PATH"))

	script := "set -e\n" + setup[0] + " &\n" +
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
