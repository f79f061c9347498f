package main

import (
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"
)

// The first signal cancels; one within a second of it (go run passing its
// Ctrl-C on) is ignored; every one after that second stops at once.
func TestWatchSignals(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sigs := make(chan os.Signal)
		quit, done := make(chan struct{}), make(chan struct{})
		var cancels, atOnce atomic.Int32
		go func() {
			defer close(done)
			watchSignals(sigs, quit, func() { cancels.Add(1) }, func() { atOnce.Add(1) })
		}()
		check := func(when string, wantCancels, wantAtOnce int32) {
			t.Helper()
			synctest.Wait()
			if c, a := cancels.Load(), atOnce.Load(); c != wantCancels || a != wantAtOnce {
				t.Errorf("%s: cancelled %d times, stopped at once %d times; want %d and %d", when, c, a, wantCancels, wantAtOnce)
			}
		}
		check("before any signal", 0, 0)
		sigs <- os.Interrupt
		check("after the first signal", 1, 0)
		time.Sleep(10 * time.Millisecond)
		sigs <- os.Interrupt
		check("after a second signal at once", 1, 0)
		time.Sleep(990 * time.Millisecond)
		sigs <- syscall.SIGTERM
		check("after a signal 1 s after the first", 1, 0)
		time.Sleep(time.Millisecond)
		sigs <- syscall.SIGTERM
		check("after a signal more than 1 s after the first", 1, 1)
		close(quit)
		<-done
	})
}
