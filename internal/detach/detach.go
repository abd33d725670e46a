// Package detach starts and tracks detached helper processes: re-executions
// of the running binary, selected by a hidden first argument, in their own
// session, that outlive the process that started them (cryptvol/detached's
// volume engine, fusefs/server's lazy FUSE server). It also holds what both
// need to find such a process again: a state file written atomically and a
// liveness check that survives PID reuse.
package detach

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Start re-executes this binary as os.Args = [self, arg, args...] in a new session
// (setsid: no controlling terminal, no signal from the starter's process
// group or terminal), stdout and stderr appended to logPath, extra as its
// file descriptors 3, 4, ... The binary's main must dispatch on arg
// (Requested) before anything else. The caller closes its copies of the
// child's ends of extra after Start returns, and Releases or Waits.
func Start(logPath string, extra []*os.File, arg string, args ...string) (*exec.Cmd, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("locating this binary to re-execute: %w", err)
	}
	logFile, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening log: %w", err)
	}
	defer logFile.Close()
	cmd := exec.Command(self, append([]string{arg}, args...)...)
	cmd.ExtraFiles = extra
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return cmd, nil
}

// Requested reports whether this process was started as arg's helper.
func Requested(arg string) bool { return len(os.Args) >= 2 && os.Args[1] == arg }

// WriteState writes v as indented JSON to path atomically (a temporary
// file renamed over it), mode 0600.
func WriteState(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("writing state file: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("writing state file: %w", err)
	}
	return nil
}

// ReadState decodes the JSON state file at path into v.
func ReadState(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("state file %s: %w", path, err)
	}
	return nil
}

// StartTime returns field 22 of /proc/PID/stat, the process start time in
// clock ticks since boot (0 if unknown or a zombie).
func StartTime(pid int) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); start time is field 22.
	if len(f) < 20 || f[0] == "Z" {
		return 0
	}
	v, _ := strconv.ParseUint(f[19], 10, 64)
	return v
}

// Alive reports whether pid is still the process that had start time
// start (running, not a zombie, not a reused PID).
func Alive(pid int, start uint64) bool {
	if pid <= 0 {
		return false
	}
	got := StartTime(pid)
	return got != 0 && got == start
}
