// Command registry measures the registry at scale: it runs `natsmesh server`
// (whose registry service keeps the view of the mesh), simulates N instances
// heartbeating every second over several NATS connections, and reports the
// server's CPU share and memory, how long the registry takes to notice an
// instance that died, and how long its down event takes to reach 100 watchers.
//
//	go run ./bench/registry [-instances 10000,50000] [-conns 10] [-watchers 100]
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/internal/procstat"
)

func main() {
	sizes := flag.String("instances", "10000,50000", "comma-separated numbers of simulated instances")
	conns := flag.Int("conns", 10, "NATS connections the instances are spread over")
	watchers := flag.Int("watchers", 100, "watchers of the dead instance's service")
	measure := flag.Duration("measure", 10*time.Second, "how long CPU and memory are measured, after the view has filled")
	flag.Parse()
	if err := run(*sizes, *conns, *watchers, *measure); err != nil {
		fmt.Fprintln(os.Stderr, "bench registry:", err)
		os.Exit(1)
	}
}

func run(sizes string, conns, watchers int, measure time.Duration) error {
	dir, err := os.MkdirTemp("", "natsmesh-bench-registry")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin, err := procstat.BuildNatsmesh(dir)
	if err != nil {
		return err
	}
	fmt.Printf("registry benchmark: 1 s heartbeats over %d connections, %d watchers, %s measured\n\n", conns, watchers, measure)
	fmt.Printf("%-10s %12s %10s %14s %14s\n", "instances", "server CPU", "RSS", "detected", "all watchers")
	for _, f := range strings.Split(sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return fmt.Errorf("-instances: %q is not a positive number", f)
		}
		if err := runOne(bin, dir, n, conns, watchers, measure); err != nil {
			return err
		}
	}
	fmt.Println("\nserver CPU is the whole natsmesh server process (nats-server routing the heartbeats and the registry view), in cores;")
	fmt.Println("detected is from the dead instance's last heartbeat to the first watcher getting its down event; all watchers, to the last one.")
	return nil
}

func runOne(bin, dir string, n, conns, watchers int, measure time.Duration) error {
	srv := exec.Command(bin, "server", "--allow-anonymous", "--listen", "127.0.0.1:0", "--data", filepath.Join(dir, "data-"+strconv.Itoa(n)), "--log-level", "warn")
	out, err := srv.StdoutPipe()
	if err != nil {
		return err
	}
	srv.Stderr = os.Stderr
	if err := srv.Start(); err != nil {
		return err
	}
	defer func() { _ = srv.Process.Signal(os.Interrupt); _ = srv.Wait() }()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	url := strings.TrimSpace(line[strings.LastIndex(line, " ")+1:])

	// The simulated instances: service svc-<i%100>, instance inst-<i>.
	var ncs []*nats.Conn
	for i := 0; i < conns; i++ {
		nc, err := nats.Connect(url, nats.Name(fmt.Sprintf("sim-%d", i)))
		if err != nil {
			return err
		}
		defer nc.Close()
		ncs = append(ncs, nc)
	}
	dead := int64(-1) // the instance that stops heartbeating
	var lastBeat atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	started := time.Now().UTC().Format(time.RFC3339Nano)
	for c, nc := range ncs {
		wg.Add(1)
		go func(c int, nc *nats.Conn) {
			defer wg.Done()
			var mine []int
			for i := c; i < n; i += conns {
				mine = append(mine, i)
			}
			seq := uint64(0)
			t := time.NewTicker(time.Second / 50) // each second in 50 slices, to spread the beats
			defer t.Stop()
			slice := 0
			buf := make([]byte, 0, 512)
			for {
				select {
				case <-stop:
					return
				case <-t.C:
				}
				if slice == 0 {
					seq++
				}
				for k := slice; k < len(mine); k += 50 {
					i := mine[k]
					if int64(i) == atomic.LoadInt64(&dead) {
						continue
					}
					svc, inst := "svc-"+strconv.Itoa(i%100), "inst-"+strconv.Itoa(i)
					buf = buf[:0]
					buf = append(buf, `{"service":"`...)
					buf = append(buf, svc...)
					buf = append(buf, `","instance":"`...)
					buf = append(buf, inst...)
					buf = append(buf, `","host":"sim","pid":1,"started":"`...)
					buf = append(buf, started...)
					buf = append(buf, `","seq":`...)
					buf = strconv.AppendUint(buf, seq, 10)
					buf = append(buf, `,"interval_ms":1000,"health":"passing","inflight":0}`...)
					if err := nc.Publish("mesh.hb."+svc+"."+inst, buf); err == nil && i == 0 {
						lastBeat.Store(time.Now().UnixNano())
					}
				}
				slice = (slice + 1) % 50
			}
		}(c, nc)
	}
	defer func() { close(stop); wg.Wait() }()

	// Wait until the registry holds every instance.
	q, err := nats.Connect(url)
	if err != nil {
		return err
	}
	defer q.Close()
	deadline := time.Now().Add(60 * time.Second)
	for {
		m, err := q.Request("mesh.registry.list", nil, 5*time.Second)
		if err == nil {
			total := 0
			// Cheap count of "instances": fields without a JSON decode of the list type.
			for _, f := range strings.Split(string(m.Data), `"instances":`)[1:] {
				v, _ := strconv.Atoi(f[:strings.IndexAny(f, ",}")])
				total += v
			}
			if total >= n {
				break
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the registry did not see all %d instances within 60s", n)
		}
		time.Sleep(200 * time.Millisecond)
	}

	// CPU and memory of the server under the steady load.
	pid := srv.Process.Pid
	cpu0 := procstat.CPU(pid)
	t0 := time.Now()
	time.Sleep(measure)
	cpu := (procstat.CPU(pid) - cpu0).Seconds() / time.Since(t0).Seconds()
	rss := procstat.RSS(pid)

	// Watchers of instance 0's service, each on its own connection.
	got := make(chan time.Time, watchers)
	for w := 0; w < watchers; w++ {
		wc, err := nats.Connect(url)
		if err != nil {
			return err
		}
		defer wc.Close()
		if _, err := wc.Subscribe("mesh.events.svc-0", func(m *nats.Msg) {
			if strings.Contains(string(m.Data), `"instance":"inst-0"`) && strings.Contains(string(m.Data), `"type":"down"`) {
				got <- time.Now()
			}
		}); err != nil {
			return err
		}
		if err := wc.Flush(); err != nil {
			return err
		}
	}
	atomic.StoreInt64(&dead, 0)
	time.Sleep(50 * time.Millisecond) // let a beat of instance 0 in flight land
	last := time.Unix(0, lastBeat.Load())
	var first, final time.Time
	for w := 0; w < watchers; w++ {
		select {
		case at := <-got:
			if w == 0 {
				first = at
			}
			final = at
		case <-time.After(15 * time.Second):
			return fmt.Errorf("%d of %d watchers got the down event", w, watchers)
		}
	}
	fmt.Printf("%-10d %11.2f %9.0fMB %14s %14s\n", n, cpu, float64(rss)/1e6,
		first.Sub(last).Round(time.Millisecond), final.Sub(last).Round(time.Millisecond))
	return nil
}
