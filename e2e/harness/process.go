package harness

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/docker/go-units"
)

// Process is a daemon started by the harness as a direct child. Its output
// goes to LogPath.
type Process struct {
	Name    string
	LogPath string

	env     *Env
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
}

// StartProcess starts path with args as a direct child (never through a
// shell), output to a log file, and registers a cleanup that stops it.
// extraEnv is appended to the harness's own environment.
func (e *Env) StartProcess(name, path string, args, extraEnv []string) (*Process, error) {
	logf, err := e.newLogFile(name)
	if err != nil {
		return nil, fmt.Errorf("%s: log file: %w", name, err)
	}
	cmd := exec.Command(path, args...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.Env = append(os.Environ(), extraEnv...)
	// If the harness itself dies (test timeout panic, SIGKILL), the kernel
	// kills its direct children too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	fmt.Fprintf(logf, "# %s %s\n", path, strings.Join(args, " "))
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &Process{Name: name, LogPath: logf.Name(), env: e, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	e.TB.Logf("started %s (pid %d), log %s", name, p.PID(), p.LogPath)
	e.TB.Cleanup(func() {
		if err := p.Stop(15 * time.Second); err != nil {
			e.TB.Logf("cleanup: %v", err)
		}
	})
	return p, nil
}

// PID is the process ID.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Exited reports whether the process has exited (and been reaped).
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Done is closed once the process has exited and been reaped.
func (p *Process) Done() <-chan struct{} { return p.done }

// ExitError is the error from Wait once the process has exited.
func (p *Process) ExitError() error {
	<-p.done
	return p.waitErr
}

// Stop sends SIGTERM, waits up to timeout, then sends SIGKILL and waits.
// Stopping an exited process is a no-op.
func (p *Process) Stop(timeout time.Duration) error {
	if p.Exited() {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(timeout):
	}
	p.env.TB.Logf("%s (pid %d) ignored SIGTERM for %v; sending SIGKILL", p.Name, p.PID(), timeout)
	return p.Kill()
}

// Signal sends sig to the process.
func (p *Process) Signal(sig os.Signal) error {
	if p.Exited() {
		return fmt.Errorf("%s (pid %d) has already exited", p.Name, p.PID())
	}
	return p.cmd.Process.Signal(sig)
}

// Kill sends SIGKILL and waits for the process to be reaped.
func (p *Process) Kill() error {
	if p.Exited() {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.done:
		return nil
	case <-time.After(30 * time.Second):
		return fmt.Errorf("%s (pid %d) still running 30s after SIGKILL", p.Name, p.PID())
	}
}

// Log returns the process's output so far.
func (p *Process) Log() string {
	data, _ := os.ReadFile(p.LogPath)
	return string(data)
}

// exitedError describes an early exit, with the end of the log.
func (p *Process) exitedError(what string) error {
	return fmt.Errorf("%s exited before %s (%v); last log lines:\n%s", p.Name, what, p.waitErr, tailLines(p.Log(), 30))
}

// WaitSocket waits until the unix socket at path accepts connections.
func (p *Process) WaitSocket(ctx context.Context, path string) error {
	return p.waitUntil(ctx, "listening on "+path, func() bool {
		c, err := net.DialTimeout("unix", path, time.Second)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
}

// WaitLog waits until the process's log contains s.
func (p *Process) WaitLog(ctx context.Context, s string) error {
	return p.waitUntil(ctx, "logging "+strconv.Quote(s), func() bool { return strings.Contains(p.Log(), s) })
}

// WaitHTTP waits until GET url answers with status 200.
func (p *Process) WaitHTTP(ctx context.Context, url string) error {
	client := &http.Client{Timeout: 2 * time.Second}
	return p.waitUntil(ctx, "serving "+url, func() bool {
		resp, err := client.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

func (p *Process) waitUntil(ctx context.Context, what string, ready func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if ready() {
			return nil
		}
		select {
		case <-p.done:
			return p.exitedError(what)
		case <-ctx.Done():
			return fmt.Errorf("%s (pid %d) not %s: %w; last log lines:\n%s", p.Name, p.PID(), what, ctx.Err(), tailLines(p.Log(), 30))
		case <-tick.C:
		}
	}
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
// Callers retry if the daemon then fails to bind it.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// ProcStatusBytes reads a "kB" field (VmHWM, VmRSS) of /proc/PID/status
// and returns it in bytes.
func ProcStatusBytes(pid int, field string) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || k != field {
			continue
		}
		fields := strings.Fields(v)
		if len(fields) != 2 || fields[1] != "kB" {
			return 0, fmt.Errorf("/proc/%d/status: unexpected %s line %q", pid, field, sc.Text())
		}
		// The kernel's "kB" is 1024 bytes, as units.RAMInBytes reads it.
		n, err := units.RAMInBytes(fields[0] + fields[1])
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/status %s: %w", pid, field, err)
		}
		return n, nil
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("/proc/%d/status has no %s", pid, field)
}

// MemorySampler samples a process's VmRSS and VmHWM periodically.
type MemorySampler struct {
	pid     int
	stop    chan struct{}
	done    chan struct{}
	mu      sync.Mutex
	peakRSS int64
	hwm     int64
	samples int
}

// SampleMemory starts sampling the process every interval until Stop.
func (p *Process) SampleMemory(interval time.Duration) *MemorySampler {
	m := &MemorySampler{pid: p.PID(), stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(m.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			m.sample()
			select {
			case <-m.stop:
				m.sample()
				return
			case <-t.C:
			}
		}
	}()
	return m
}

func (m *MemorySampler) sample() {
	rss, err1 := ProcStatusBytes(m.pid, "VmRSS")
	hwm, err2 := ProcStatusBytes(m.pid, "VmHWM")
	m.mu.Lock()
	defer m.mu.Unlock()
	if err1 == nil && rss > m.peakRSS {
		m.peakRSS = rss
	}
	if err2 == nil {
		m.hwm = hwm
	}
	if err1 == nil {
		m.samples++
	}
}

// MemoryStats is what a MemorySampler saw.
type MemoryStats struct {
	PeakSampledRSS int64 // highest VmRSS seen in the samples, bytes
	FinalHWM       int64 // VmHWM (kernel-tracked peak RSS) at the last sample, bytes
	Samples        int
}

// Stop ends sampling (taking one last sample) and returns the figures.
func (m *MemorySampler) Stop() MemoryStats {
	select {
	case <-m.stop:
	default:
		close(m.stop)
	}
	<-m.done
	m.mu.Lock()
	defer m.mu.Unlock()
	return MemoryStats{PeakSampledRSS: m.peakRSS, FinalHWM: m.hwm, Samples: m.samples}
}

// procCmdlines returns the PID -> argv of every process on the machine.
func procCmdlines() map[int][]string {
	out := map[int][]string{}
	ents, _ := os.ReadDir("/proc")
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
		if err != nil || len(data) == 0 {
			continue
		}
		out[pid] = strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
	}
	return out
}

// ProcStatFields returns the fields of /proc/PID/stat after the command
// name, from field 3 (the state) on, or nil when pid does not exist. The
// command name (field 2) may contain spaces: the fields start after the
// last ')'.
func ProcStatFields(pid int) []string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(s[i+1:])
}

// procParent returns the parent PID of pid, or 0.
func procParent(pid int) int {
	f := ProcStatFields(pid)
	if len(f) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

// descendants returns every live process below root, deepest first.
func descendants(root int) []int {
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		if pp := procParent(pid); pp > 0 {
			children[pp] = append(children[pp], pid)
		}
	}
	var out []int
	var walk func(int)
	walk = func(p int) {
		for _, c := range children[p] {
			walk(c)
			out = append(out, c)
		}
	}
	walk(root)
	return out
}

// killPID sends SIGKILL to pid and waits (up to 10 s) for it to disappear
// or become a zombie of someone else.
func killPID(pid int) error {
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		if errors.Is(err, syscall.ESRCH) {
			return nil
		}
		return fmt.Errorf("kill %d: %w", pid, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return nil
		}
		if i := strings.LastIndexByte(string(data), ')'); i >= 0 && strings.HasPrefix(string(data[i+1:]), " Z") {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("pid %d still alive 10s after SIGKILL", pid)
}
