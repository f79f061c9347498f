package proxy

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// logLinesPerSecond bounds the lines a proxy logs about individual calls.
const logLinesPerSecond = 10

// limitedLog logs at most perSecond lines about individual calls each
// second, so that an outage cannot flood the log; the lines it skips are
// counted and reported with the next line it writes.
type limitedLog struct {
	l         *slog.Logger
	perSecond int

	mu      sync.Mutex
	sec     int64
	n       int
	skipped int
}

func newLimitedLog(l *slog.Logger, perSecond int) *limitedLog {
	return &limitedLog{l: l, perSecond: perSecond}
}

func (g *limitedLog) log(level slog.Level, msg string, args ...any) {
	if !g.l.Enabled(context.Background(), level) {
		return
	}
	sec := time.Now().Unix()
	g.mu.Lock()
	if sec != g.sec {
		g.sec, g.n = sec, 0
	}
	if g.n >= g.perSecond {
		g.skipped++
		g.mu.Unlock()
		return
	}
	g.n++
	skipped := g.skipped
	g.skipped = 0
	g.mu.Unlock()
	if skipped > 0 {
		args = append(args, "skipped_lines", skipped)
	}
	g.l.Log(context.Background(), level, msg, args...)
}

// always logs a line that must not be skipped (a state change).
func (g *limitedLog) always(level slog.Level, msg string, args ...any) {
	g.l.Log(context.Background(), level, msg, args...)
}
