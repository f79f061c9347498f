package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/natsmesh/natsmesh/metrics"
)

func runTop(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("top", "top [SERVICE] [flags]", `
Shows the mesh's traffic as natsmesh server sees it from the stats every
sidecar and gateway publishes (--stats-interval, 5s), refreshed every
--interval over the last --window:

  services: for each service, the instances reporting, the requests per
  second they served, the share that succeeded (a failure is a 5xx), the
  50th, 95th and 99th percentile latency, and its callers' circuit breakers
  (open (N): N callers have it open);

  edges: for each caller and callee, the same as the callers saw it, which
  includes the calls no instance got (no-responders, circuit-open...), the
  retries per second, and the failures by Mesh-Error code ("app" for the
  5xx the app answered itself); calls a route of the callee's config sent
  to a subset show as their own edge, TO being service/subset (a canary
  shows as reviews/v1 and reviews/v3).

With SERVICE it shows only that service and the edges to and from it. With
--json it prints one summary as JSON (rps, success as a ratio, p50_ms, p95_ms,
p99_ms, null without traffic) and exits. Stop it with Ctrl-C.`, stderr)
	var nf natsFlags
	nf.register(fs)
	prefix := prefixFlag(fs)
	asJSON := fs.Bool("json", false, "print one summary as JSON and exit, for scripts")
	interval := fs.Duration("interval", 2*time.Second, "how often to refresh")
	window := fs.Duration("window", metrics.DefaultWindow, "the span the figures cover, up to 5m")
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for natsmesh server to answer")
	pos, err := parse(fs, args, stdout)
	if err != nil {
		return err
	}
	service, err := optionalService(pos)
	if err != nil {
		return err
	}
	switch {
	case *interval < 100*time.Millisecond:
		return usagef("--interval %s: use 100ms or more", *interval)
	case *window <= 0 || *window > metrics.MaxWindow:
		return usagef("--window %s: use more than 0 and up to %s", *window, metrics.MaxWindow)
	case *timeout <= 0:
		return usagef("--timeout %s: use more than 0", *timeout)
	}
	if err := checkPrefix(*prefix); err != nil {
		return err
	}
	nf.cfg.Name = "natsmesh-top"
	nc, err := nf.connect()
	if err != nil {
		return err
	}
	defer nc.Close()
	fetch := func() (metrics.Summary, error) {
		ctx, cancel := context.WithTimeout(ctx, *timeout)
		defer cancel()
		s, err := metrics.FetchSummary(ctx, nc, *prefix, *window)
		return topOnly(s, service), err
	}
	s, err := fetch()
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(s)
	}
	tty := topIsTerminal(stdout)
	tick := time.NewTicker(*interval)
	defer tick.Stop()
	for {
		var frame bytes.Buffer
		if tty {
			frame.WriteString("\x1b[H\x1b[2J") // home, clear the screen
		}
		writeTop(&frame, s, service)
		if _, err := stdout.Write(frame.Bytes()); err != nil {
			return err
		}
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-tick.C:
			}
			if s, err = fetch(); err == nil {
				break
			}
			if ctx.Err() != nil {
				return nil
			}
			fmt.Fprintf(stderr, "natsmesh top: %v (trying again in %s)\n", err, *interval)
		}
	}
}

// topOnly keeps service and the edges to and from it ("": everything).
func topOnly(s metrics.Summary, service string) metrics.Summary {
	if service == "" {
		return s
	}
	s.Services = slices.DeleteFunc(s.Services, func(x metrics.ServiceStats) bool { return x.Name != service })
	s.Edges = slices.DeleteFunc(s.Edges, func(e metrics.EdgeStats) bool { return e.From != service && e.To != service })
	return s
}

// topIsTerminal tells whether w is a terminal, where top redraws in place.
func topIsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// writeTop writes one summary as two tables.
func writeTop(w io.Writer, s metrics.Summary, service string) {
	window := time.Duration(s.WindowMS) * time.Millisecond
	fmt.Fprintf(w, "%s  window %s  %d instances reporting\n", s.At.Local().Format("15:04:05"), window, s.Instances)
	if s.Truncated {
		fmt.Fprintln(w, "(the mesh has more services or edges than a summary holds: the busiest are shown)")
	}
	fmt.Fprintln(w)
	if len(s.Services) == 0 && len(s.Edges) == 0 {
		if service != "" {
			fmt.Fprintf(w, "no stats of %s: no instance of it, and no caller of it, reports any\n\n", service)
		} else {
			fmt.Fprintf(w, "no stats yet: sidecars and gateways publish theirs every --stats-interval (5s)\n\n")
		}
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tINSTANCES\tRPS\tSUCCESS\tP50\tP95\tP99\tBREAKER")
	for _, x := range s.Services {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", x.Name, x.Instances, topRate(x.RPS), topSuccess(x.Success),
			topLatency(x.P50MS), topLatency(x.P95MS), topLatency(x.P99MS), topBreaker(x))
	}
	_ = tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FROM\tTO\tRPS\tSUCCESS\tP50\tP95\tP99\tRETRIES/S\tERRORS")
	for _, e := range s.Edges {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.From, edgeTarget(&e), topRate(e.RPS), topSuccess(e.Success),
			topLatency(e.P50MS), topLatency(e.P95MS), topLatency(e.P99MS), topRate(e.RetriesPerSecond), topErrors(e.Errors))
	}
	_ = tw.Flush()
	fmt.Fprintln(w)
}

// edgeTarget is an edge's callee, with the subset its calls were routed to.
func edgeTarget(e *metrics.EdgeStats) string {
	if e.Subset != "" {
		return e.To + "/" + e.Subset
	}
	return e.To
}

// topRate prints a rate with three significant figures or so.
func topRate(r float64) string {
	switch {
	case r == 0:
		return "0"
	case r < 10:
		return fmt.Sprintf("%.2f", r)
	case r < 100:
		return fmt.Sprintf("%.1f", r)
	}
	return fmt.Sprintf("%.0f", r)
}

func topSuccess(p *float64) string {
	if p == nil {
		return "-"
	}
	return fmt.Sprintf("%.2f%%", *p*100)
}

// topLatency prints milliseconds with three significant figures or so.
func topLatency(ms *float64) string {
	switch {
	case ms == nil:
		return "-"
	case *ms < 10:
		return fmt.Sprintf("%.2fms", *ms)
	case *ms < 100:
		return fmt.Sprintf("%.1fms", *ms)
	case *ms < 1000:
		return fmt.Sprintf("%.0fms", *ms)
	}
	return fmt.Sprintf("%.2fs", *ms/1000)
}

func topBreaker(s metrics.ServiceStats) string {
	switch s.Breaker {
	case "":
		return "-"
	case "open":
		return fmt.Sprintf("open (%d)", s.BreakerOpen)
	case "half-open":
		return fmt.Sprintf("half-open (%d)", s.BreakerHalfOpen)
	}
	return s.Breaker
}

// topErrors prints failures by code, the most frequent first:
// "timeout:3 no-responders:1".
func topErrors(m map[string]uint64) string {
	if len(m) == 0 {
		return "-"
	}
	codes := make([]string, 0, len(m))
	for c := range m {
		codes = append(codes, c)
	}
	slices.SortFunc(codes, func(a, b string) int { return cmp.Or(cmp.Compare(m[b], m[a]), strings.Compare(a, b)) })
	var b strings.Builder
	for i, c := range codes {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s:%d", c, m[c])
	}
	return b.String()
}
