package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/proxy"
)

// headerFlags collects repeated --header "Name: value" flags.
type headerFlags []string

func (h *headerFlags) String() string     { return strings.Join(*h, ", ") }
func (h *headerFlags) Set(v string) error { *h = append(*h, v); return nil }

func runCall(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("call", "call NAME PATH [flags]", `
Calls service NAME once over the mesh, straight over NATS with no sidecar, and
prints the response body. Exits 1 when the answer is an error: an app's HTTP
4xx/5xx (its body is printed), or a failure of the mesh, whose code and
explanation are printed to stderr.

Example: natsmesh call ratings /ratings/0 --method POST --data '{"stars":5}'`, stderr)
	var nf natsFlags
	nf.register(fs)
	method := fs.String("method", http.MethodGet, "HTTP method")
	data := fs.String("data", "", "request body; @FILE reads a file, @- reads stdin")
	timeout := fs.Duration("timeout", proxy.DefaultTimeout, "deadline of the call")
	prefix := prefixFlag(fs)
	include := fs.Bool("include", false, "print the status line and response headers before the body")
	var headers headerFlags
	fs.Var(&headers, "header", `request header "Name: value" (repeatable)`)
	pos, err := parse(fs, args, stdout)
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		return usagef("want NAME and PATH, got %d arguments (see natsmesh call --help)", len(pos))
	}
	service, path := pos[0], pos[1]
	if err := bus.ValidateName("service", service); err != nil {
		return usageError{err}
	}
	if !strings.HasPrefix(path, "/") {
		return usagef("PATH %q must start with /", path)
	}
	if err := checkPrefix(*prefix); err != nil {
		return err
	}
	body, err := readData(*data)
	if err != nil {
		return err
	}
	nf.cfg.Name = "natsmesh-call"
	nf.cfg.InboxPrefix = bus.Subjects{Prefix: *prefix}.Inbox("")
	nc, err := nf.connect()
	if err != nil {
		return err
	}
	defer nc.Close()
	tr, err := proxy.NewTransport(nc, proxy.TransportConfig{Prefix: *prefix, Timeout: *timeout})
	if err != nil {
		return err
	}
	defer tr.Close()

	var rb io.Reader
	if body != nil {
		rb = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, *method, "http://"+service+path, rb)
	if err != nil {
		return usageError{err}
	}
	for _, h := range headers {
		k, v, ok := strings.Cut(h, ":")
		if !ok {
			return usagef("--header %q: use \"Name: value\"", h)
		}
		req.Header.Add(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	start := time.Now()
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if code := resp.Header.Get(bus.HeaderError); code != "" {
		why, _ := io.ReadAll(resp.Body)
		fmt.Fprintf(stderr, "natsmesh call: %s: %s (HTTP %d after %s): %s\n", service, code, resp.StatusCode,
			time.Since(start).Round(time.Millisecond), strings.TrimSpace(string(why)))
		return exitError(1)
	}
	if *include {
		fmt.Fprintf(stdout, "HTTP/1.1 %s\n", resp.Status)
		_ = resp.Header.Write(stdout)
		fmt.Fprintln(stdout)
	}
	if _, err := io.Copy(stdout, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode >= 400 {
		fmt.Fprintf(stderr, "natsmesh call: %s answered HTTP %d (instance %s)\n", service, resp.StatusCode, resp.Header.Get(bus.HeaderInstance))
		return exitError(1)
	}
	return nil
}

func readData(d string) ([]byte, error) {
	switch {
	case d == "":
		return nil, nil
	case d == "@-":
		return io.ReadAll(os.Stdin)
	case strings.HasPrefix(d, "@"):
		b, err := os.ReadFile(d[1:])
		if err != nil {
			return nil, fmt.Errorf("--data: %w", err)
		}
		return b, nil
	}
	return []byte(d), nil
}
