// Package procstat reads what the benchmarks measure of other processes —
// CPU time, resident memory and start time, from /proc (Linux) — builds the
// natsmesh binary they run, finds free ports for it, and starts and stops
// the processes of a run (Procs).
package procstat

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat times; 100 on Linux.
const clockTicks = 100

// Stat is what the benchmarks read of /proc/<pid>/stat.
type Stat struct {
	Pid, PPid, Pgrp int
	Comm            string        // the executable's name, at most 15 bytes
	State           byte          // R, S, D, Z (zombie), ...
	CPU             time.Duration // user and system CPU time so far
	Started         time.Duration // when it started, as time since the machine booted
}

// ReadStat reads a process's /proc/<pid>/stat.
func ReadStat(pid int) (Stat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return Stat{}, err
	}
	s := string(b)
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < open {
		return Stat{}, fmt.Errorf("/proc/%d/stat: %q", pid, s)
	}
	// The fields after the command name, which is in parentheses: f[0] is
	// field 3 of proc(5).
	f := strings.Fields(s[end+1:])
	if len(f) < 20 {
		return Stat{}, fmt.Errorf("/proc/%d/stat: %q", pid, s)
	}
	num := func(i int) int64 { n, _ := strconv.ParseInt(f[i], 10, 64); return n }
	return Stat{
		Pid:     pid,
		PPid:    int(num(1)),
		Pgrp:    int(num(2)),
		Comm:    s[open+1 : end],
		State:   f[0][0],
		CPU:     time.Duration(num(11)+num(12)) * time.Second / clockTicks,
		Started: time.Duration(num(19)) * time.Second / clockTicks,
	}, nil
}

// All reads the stat of every process; those that exit meanwhile are left out.
func All() ([]Stat, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var all []Stat
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := ReadStat(pid); err == nil {
			all = append(all, st)
		}
	}
	return all, nil
}

// CPU is a process's user and system CPU time so far; 0 if unknown.
func CPU(pid int) time.Duration {
	st, err := ReadStat(pid)
	if err != nil {
		return 0
	}
	return st.CPU
}

// RSS is a process's resident memory in bytes; 0 if unknown.
func RSS(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb * 1024
		}
	}
	return 0
}

// BuildNatsmesh builds the natsmesh binary into dir and returns its path.
func BuildNatsmesh(dir string) (string, error) {
	bin := filepath.Join(dir, "natsmesh")
	build := exec.Command("go", "build", "-o", bin, "github.com/natsmesh/natsmesh/cmd/natsmesh")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		return "", fmt.Errorf("build natsmesh: %w", err)
	}
	return bin, nil
}

// FreeAddr is a 127.0.0.1 address whose port was free a moment ago.
func FreeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// MachineCPU is the CPU time all the machine's processors have spent busy
// (user, nice, system, irq and softirq) since it booted, from /proc/stat.
func MachineCPU() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0, fmt.Errorf("/proc/stat: %q", line)
	}
	var ticks int64
	for _, i := range []int{1, 2, 3, 6, 7} {
		n, _ := strconv.ParseInt(f[i], 10, 64)
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}
