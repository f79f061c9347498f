package main

import (
	"regexp"
	"strings"
	"testing"
)

// Every command that connects to NATS takes --ping-interval and
// --max-pings-out, and refuses values that are not positive as a usage
// mistake before it connects.
func TestPingFlags(t *testing.T) {
	t.Parallel()
	commands := [][]string{{"server"}, {"sidecar"}, {"gateway"}, {"call"}, {"services"}, {"instances"}, {"watch"}, {"top"}, {"apply"}, {"config", "get"}}
	for _, cmd := range commands {
		t.Run(strings.Join(cmd, " "), func(t *testing.T) {
			t.Parallel()
			stdout, stderr, code := natsmesh(t, append(cmd, "--help")...)
			if code != 0 {
				t.Fatalf("--help: exit %d\n%s", code, stderr)
			}
			for _, want := range []string{`(?m)^\s+--ping-interval duration\n.*\(default "2s"\)$`, `(?m)^\s+--max-pings-out int\n.*\(default "2"\)$`} {
				if !regexp.MustCompile(want).MatchString(stdout) {
					t.Errorf("help does not match %s:\n%s", want, stdout)
				}
			}
			for _, bad := range [][]string{{"--ping-interval", "0s"}, {"--ping-interval", "-1s"}, {"--ping-interval", "soon"}, {"--max-pings-out", "0"}, {"--max-pings-out", "-2"}} {
				_, stderr, code := natsmesh(t, append(append([]string{}, cmd...), bad...)...)
				if code != 2 || !strings.Contains(stderr, bad[0]) || !strings.Contains(stderr, "use a positive") {
					t.Errorf("%s %s: exit %d, stderr %q; want a usage error (2) naming the flag", bad[0], bad[1], code, stderr)
				}
			}
		})
	}
}
