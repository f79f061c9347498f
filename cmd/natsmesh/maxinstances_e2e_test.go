package main

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/internal/meshtest"
)

// --max-instances bounds the registry's view: instances past it are left
// out, not a crash or an unbounded map.
func TestServerMaxInstances(t *testing.T) {
	t.Parallel()
	data := t.TempDir()
	p := start(t, "server", nil, natsmeshBin(t), "server", "--listen", "127.0.0.1:0", "--data", data, "--max-instances", "2")
	natsURL := p.waitOutput(t, serverReady, startTimeout)
	nc, err := nats.Connect(natsURL, nats.UserCredentials(adminCreds(natsURL)))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	started := time.Now().UTC().Format(time.RFC3339Nano)
	beat := func(seq int) {
		for i := 1; i <= 3; i++ {
			doc := fmt.Sprintf(`{"service":"big","instance":"big-%d","host":"h","pid":1,"started":%q,"seq":%d,"interval_ms":1000,"health":"passing"}`, i, started, seq)
			if err := nc.Publish(fmt.Sprintf("mesh.hb.big.big-%d", i), []byte(doc)); err != nil {
				t.Fatal(err)
			}
		}
		_ = nc.Flush()
	}
	seq := 1
	meshtest.CheckFor(t, 15*time.Second, 300*time.Millisecond, func() error {
		beat(seq)
		seq++
		stdout, stderr, code := natsmesh(t, "instances", "big", "--nats", natsURL)
		if code != 0 || len(regexp.MustCompile(`(?m)^big-\d`).FindAllString(stdout, -1)) != 2 {
			return fmt.Errorf("instances big: exit %d\n%s%s", code, stdout, stderr)
		}
		return nil
	})
	_, stderr, code := natsmesh(t, "server", "--listen", "127.0.0.1:0", "--data", t.TempDir(), "--max-instances", "0")
	if code != 2 || !strings.Contains(stderr, "--max-instances 0: use at least 1") {
		t.Errorf("--max-instances 0: exit %d, %q", code, stderr)
	}
}
