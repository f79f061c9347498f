package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// identityFlags issues service an identity on the server whose data
// directory is data, waiting for the server to have made its trust roots,
// and returns the flag its sidecar connects with.
func identityFlags(bin, data, service string) ([]string, error) {
	out := filepath.Join(data, "..", service+".creds")
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(data, "admin.creds")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("natsmesh server wrote no admin credentials in %s within 10s", data)
		}
		time.Sleep(20 * time.Millisecond)
	}
	cmd := exec.Command(bin, "identity", "issue", service, "--data", data, "--out", out, "--force")
	if b, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("natsmesh identity issue %s: %v: %s", service, err, b)
	}
	return []string{"--creds", out}, nil
}
