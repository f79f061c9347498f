package procstat

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"sync"
	"time"
)

// Procs are the processes a benchmark started, stopped together at its end.
type Procs struct {
	mu   sync.Mutex
	list []*exec.Cmd
}

// Start runs name with args and env added to this process's environment;
// its stdout is discarded and its stderr kept in a temporary file, removed
// by StopAll.
func (p *Procs) Start(name string, env []string, args ...string) (*exec.Cmd, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout = io.Discard
	stderr, err := os.CreateTemp("", "natsmesh-bench-*.log")
	if err != nil {
		return nil, err
	}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		stderr.Close()
		os.Remove(stderr.Name())
		return nil, err
	}
	p.mu.Lock()
	p.list = append(p.list, cmd)
	p.mu.Unlock()
	return cmd, nil
}

// StopAll interrupts the processes, last started first, kills any that has
// not exited 5 s later, and removes their stderr files.
func (p *Procs) StopAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := len(p.list) - 1; i >= 0; i-- {
		c := p.list[i]
		_ = c.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = c.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = c.Process.Kill()
			<-done
		}
		if f, ok := c.Stderr.(*os.File); ok {
			f.Close()
			os.Remove(f.Name())
		}
	}
	p.list = nil
}

// WaitHTTP polls u until it answers 200, for at most 15 s.
func WaitHTTP(c *http.Client, u string) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := c.Get(u)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready: %w", u, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
