package shape_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/natsmesh/natsmesh/internal/shape"
)

// root is the module's root, found from the test's working directory.
func root(t *testing.T) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	r, err := shape.ModuleRoot(wd)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// No function of a library package is longer than shape.MaxLines lines or
// has more than shape.MaxBranches branches.
func TestFunctionSize(t *testing.T) {
	found, err := shape.Check(root(t), shape.MaxLines, shape.MaxBranches)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range found {
		t.Errorf("%s", f)
	}
	if len(found) > 0 {
		t.Errorf("%d functions over %d lines or %d branches; split them into functions that do one thing each",
			len(found), shape.MaxLines, shape.MaxBranches)
	}
}

// Package proxy exports at most shape.MaxProxyExports names.
func TestProxyExports(t *testing.T) {
	names, err := shape.Exports(filepath.Join(root(t), "proxy"))
	if err != nil {
		t.Fatal(err)
	}
	if len(names) > shape.MaxProxyExports {
		t.Errorf("package proxy exports %d names, at most %d allowed:\n\t%s",
			len(names), shape.MaxProxyExports, strings.Join(names, "\n\t"))
	}
}

// The library packages a Go program embeds link neither the NATS server
// nor the Prometheus client: those live in bus/embedded and metrics/prom.
// Neither does a program that only serves and calls services
// (examples/library), nor the role packages.
func TestLibraryDependencies(t *testing.T) {
	forbidden := []string{
		"github.com/nats-io/nats-server/v2/server",
		"github.com/prometheus/client_golang/prometheus",
	}
	cmd := exec.Command("go", "list", "-deps", "./proxy", "./registry", "./config", "./metrics",
		"./proxy/traffic", "./sidecar", "./gateway", "./controlplane", "./identity", "./examples/library")
	cmd.Dir = root(t)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v\n%s", cmd, err, stderr.Bytes())
	}
	deps := strings.Fields(string(out))
	if len(deps) == 0 {
		t.Fatalf("%s listed nothing", cmd)
	}
	for _, pkg := range forbidden {
		if slices.Contains(deps, pkg) {
			t.Errorf("a library package or examples/library depends on %s", pkg)
		}
	}
}
