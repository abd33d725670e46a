// Package detached runs a cryptvol volume in a detached engine process, so
// the volume (and, for the userspace engine, its FUSE server) outlives the
// command that opened it: cocoonctl volume open/create, or cocoond's
// encrypted storage volume, which must survive a cocoond restart.
//
// Start re-executes the running binary with a hidden argument
// (EngineCommand) in its own session. The binary's main calls
// RunEngineIfRequested first thing, so any binary that calls Start is also
// an engine. The parent hands the engine the request and the passphrase
// over a pipe: no key or passphrase ever reaches a file, argv or the
// environment. A small JSON state file per mount directory (no secrets)
// lets Stop find the process and, after a crash, the mounts and loop device
// to clean up.
package detached

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/cocoon-cc/cocoon/cryptvol"
	"github.com/cocoon-cc/cocoon/cryptvol/loop"
	"github.com/cocoon-cc/cocoon/internal/detach"
)

// DefaultStateDir is where state files live unless a Request names another.
const DefaultStateDir = "/run/cocoon/volumes"

// Operations a Request asks for.
const (
	OpOpen   = "open"   // unlock a LUKS2 volume with a passphrase
	OpCreate = "create" // an ephemeral volume: random key, header in memory
)

// Request is what the parent sends the engine process, followed on the same
// pipe by the passphrase bytes (OpOpen only).
type Request struct {
	Op         string `json:"op"`
	Header     string `json:"header,omitempty"`
	Device     string `json:"device,omitempty"`
	Backing    string `json:"backing,omitempty"`
	Size       int64  `json:"size,omitempty"`
	MountDir   string `json:"mount_dir"`
	Mkfs       bool   `json:"mkfs,omitempty"`
	Engine     string `json:"engine,omitempty"`
	RuntimeDir string `json:"runtime_dir,omitempty"`
	StateDir   string `json:"state_dir"`
}

// State is the per-volume state file. It never holds a secret.
type State struct {
	cryptvol.Info
	PID       int    `json:"pid"`
	StartTime uint64 `json:"start_time"` // /proc/PID/stat field 22: guards against PID reuse
	Log       string `json:"log"`
}

// StatePaths returns the absolute mount directory and the state and log
// files for it under stateDir.
func StatePaths(stateDir, mountDir string) (abs, state, logPath string, err error) {
	abs, err = filepath.Abs(mountDir)
	if err != nil {
		return "", "", "", fmt.Errorf("mount directory: %w", err)
	}
	sum := sha256.Sum256([]byte(abs))
	base := filepath.Join(stateDir, hex.EncodeToString(sum[:8]))
	return abs, base + ".json", base + ".log", nil
}

// Started describes an engine process that reported its volume mounted.
type Started struct {
	MountDir string
	PID      int
	Log      string
}

// Start runs req in a detached engine process and waits until it reports
// the volume mounted. Cancelling ctx sends the engine SIGTERM, which
// abandons the open (a key derivation can take long) and reports.
func Start(ctx context.Context, req Request, secret []byte) (Started, error) {
	if req.StateDir == "" {
		req.StateDir = DefaultStateDir
	}
	abs, statePath, logPath, err := StatePaths(req.StateDir, req.MountDir)
	if err != nil {
		return Started{}, err
	}
	req.MountDir = abs
	if st, err := ReadState(statePath); err == nil && ProcessAlive(st.PID, st.StartTime) {
		return Started{}, fmt.Errorf("%s is already served by engine process %d", abs, st.PID)
	}
	if err := os.MkdirAll(req.StateDir, 0o700); err != nil {
		return Started{}, fmt.Errorf("creating state directory: %w", err)
	}
	cmd, pipes, err := startProcess(logPath)
	if err != nil {
		return Started{}, err
	}
	defer pipes.status.Close()
	werr := sendRequest(pipes.request, req, secret)
	// Our own cancellation (SIGTERM, SIGINT) reaches the engine process,
	// which abandons the open and reports.
	stopForward := context.AfterFunc(ctx, func() { _ = cmd.Process.Signal(syscall.SIGTERM) }) // it may have exited already
	status, _ := io.ReadAll(pipes.status)
	stopForward()
	if string(status) == "ok\n" && werr == nil {
		pid := cmd.Process.Pid
		_ = cmd.Process.Release() // only frees the handle; the engine runs on detached
		return Started{MountDir: abs, PID: pid, Log: logPath}, nil
	}
	_ = cmd.Wait() // the engine reported its failure on the status pipe; its exit status adds nothing
	msg := strings.TrimPrefix(strings.TrimSpace(string(status)), "error: ")
	if msg == "" {
		msg = "engine process exited without reporting; see " + logPath
	}
	return Started{}, fmt.Errorf("%s: %s", req.Op, msg)
}

// enginePipes are the parent's ends of the request and status pipes.
type enginePipes struct{ request, status *os.File }

// startProcess starts this binary as the engine process in its own
// session, its output appended to logPath.
func startProcess(logPath string) (*exec.Cmd, enginePipes, error) {
	reqR, reqW, err := os.Pipe()
	if err != nil {
		return nil, enginePipes{}, err
	}
	statR, statW, err := os.Pipe()
	if err != nil {
		reqR.Close()
		reqW.Close()
		return nil, enginePipes{}, err
	}
	cmd, err := detach.Start(logPath, []*os.File{reqR, statW}, EngineCommand) // fds 3 and 4
	reqR.Close()
	statW.Close()
	if err != nil {
		reqW.Close()
		statR.Close()
		return nil, enginePipes{}, fmt.Errorf("starting engine process: %w", err)
	}
	return cmd, enginePipes{request: reqW, status: statR}, nil
}

// sendRequest writes the request line and the secret, then closes the pipe.
func sendRequest(w *os.File, req Request, secret []byte) error {
	defer w.Close()
	js, _ := json.Marshal(req)
	if _, err := w.Write(append(js, '\n')); err != nil {
		return err
	}
	if len(secret) > 0 {
		_, err := w.Write(secret)
		return err
	}
	return nil
}

func writeState(path string, st *State) error { return detach.WriteState(path, st) }

// ReadState reads a state file written by an engine process.
func ReadState(path string) (*State, error) {
	var st State
	if err := detach.ReadState(path, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// processStartTime returns field 22 of /proc/PID/stat (0 if unknown).
func processStartTime(pid int) uint64 { return detach.StartTime(pid) }

// ProcessAlive reports whether pid is still the engine process we started
// (running, not a zombie, same start time).
func ProcessAlive(pid int, start uint64) bool { return detach.Alive(pid, start) }

// Stop releases the volume mounted at mountDir: the engine process closes
// it (destroy: and wipes its header, removing what it created). If the
// engine process crashed, Stop cleans up the mounts and loop device it
// left. It waits up to timeout for the engine process to finish.
func Stop(ctx context.Context, stateDir, mountDir string, destroy bool, timeout time.Duration) error {
	abs, statePath, _, err := StatePaths(stateDir, mountDir)
	if err != nil {
		return err
	}
	st, err := ReadState(statePath)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("no cocoon volume is mounted at %s", abs)
	}
	if err != nil {
		return err
	}
	if ProcessAlive(st.PID, st.StartTime) {
		released, err := signalEngine(st, abs, statePath, destroy, timeout)
		if err != nil || released {
			return err
		}
	}
	// The engine process is gone but left state behind: it crashed.
	log.G(ctx).WithFields(log.Fields{"mount": abs, "pid": st.PID}).Warn("engine process gone; cleaning up after it")
	return cleanupAfterCrash(ctx, st, statePath, destroy)
}

// signalEngine asks a live engine process to close (SIGTERM) or destroy
// (SIGUSR1) its volume and waits for it; released reports a clean exit.
func signalEngine(st *State, abs, statePath string, destroy bool, timeout time.Duration) (released bool, err error) {
	sig := syscall.SIGTERM
	if destroy {
		sig = syscall.SIGUSR1
	}
	if err := syscall.Kill(st.PID, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return false, fmt.Errorf("signalling engine process %d: %w", st.PID, err)
	}
	deadline := time.Now().Add(timeout)
	for ProcessAlive(st.PID, st.StartTime) {
		if time.Now().After(deadline) {
			return false, fmt.Errorf("engine process %d still serving %s after %v (file system busy?); see %s", st.PID, abs, timeout, st.Log)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := os.Stat(statePath); errors.Is(err, os.ErrNotExist) {
		if destroy {
			os.Remove(st.Log) // nothing left to debug
		}
		return true, nil // clean exit: the engine released everything
	}
	return false, nil
}

func cleanupAfterCrash(ctx context.Context, st *State, statePath string, destroy bool) error {
	errs := releaseMounts(ctx, st)
	if destroy && len(errs) == 0 {
		errs = append(errs, wipeAfterCrash(st))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if destroy {
		os.Remove(st.Log)
	}
	return os.Remove(statePath)
}

// releaseMounts unmounts the volume, detaches its loop device and
// unmounts the userspace engine's FUSE file.
func releaseMounts(ctx context.Context, st *State) []error {
	var errs []error
	if err := unix.Unmount(st.MountDir, 0); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		errs = append(errs, fmt.Errorf("unmounting %s: %w", st.MountDir, err))
	}
	if strings.HasPrefix(st.BlockDevice, "/dev/loop") {
		if _, attached := loop.BackingFile(st.BlockDevice); attached {
			if err := loop.DetachPath(ctx, st.BlockDevice, 10*time.Second); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if st.EngineMount != "" {
		if err := unix.Unmount(st.EngineMount, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmounting engine FUSE mount: %w", err))
		}
		os.Remove(st.EngineMount)
	}
	return errs
}

// wipeAfterCrash destroys what a crashed engine's volume leaves.
func wipeAfterCrash(st *State) error {
	switch {
	case st.Ephemeral:
		// The header died with the process; remove only a backing file
		// the engine created, never a device the user named.
		if st.CreatedBacking != "" {
			if err := os.Remove(st.CreatedBacking); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
		}
		return nil
	case st.Header != "":
		return cryptvol.WipeHeader(st.Header, 0, true)
	case st.Device != "":
		return cryptvol.WipeHeader(st.Device, 0, false)
	}
	return nil
}
