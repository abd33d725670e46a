package main

// cocoonctl volume: LUKS2 volumes through cryptvol. open and create start a
// detached engine process ("volume serve", its own session) that holds the
// volume (and, for the userspace engine, the FUSE server) until close or
// destroy signals it. The parent hands it the request and the passphrase
// over a pipe: no key or passphrase ever reaches a file, argv or the
// environment. A small JSON state file per mount directory (no secrets)
// lets close and destroy find the process and, after a crash, the mounts
// and loop device to clean up.

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/cocoon-cc/cocoon/cryptvol"
	"github.com/cocoon-cc/cocoon/cryptvol/loop"
	"github.com/cocoon-cc/cocoon/cryptvol/luks2"
)

const defaultVolumeStateDir = "/run/cocoon/volumes"

func init() {
	register(command{name: "volume format", summary: "write a LUKS2 header (aes-xts-plain64, 4K sectors) with a passphrase keyslot", run: runVolumeFormat})
	register(command{name: "volume open", summary: "unlock a LUKS2 volume and mount it (engine runs detached)", run: runVolumeOpen})
	register(command{name: "volume create", summary: "create and mount an ephemeral volume (random key, header in memory)", run: runVolumeCreate})
	register(command{name: "volume close", summary: "unmount a volume and stop its engine: volume close DIR", run: runVolumeClose})
	register(command{name: "volume destroy", summary: "close a volume and wipe its header (ephemeral: remove backing)", run: runVolumeDestroy})
	register(command{name: "volume serve", summary: "(internal) engine process started by volume open/create", run: runVolumeServe})
}

// readPassphrase reads the file exactly, like cryptsetup --key-file.
func readPassphrase(path string) ([]byte, error) {
	if path == "" {
		return nil, fmt.Errorf("--passphrase-file is required: %w", errUsage)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading passphrase file: %w", err)
	}
	if len(b) == 0 {
		return nil, fmt.Errorf("passphrase file %s is empty", path)
	}
	return b, nil
}

func runVolumeFormat(ctx context.Context, args []string) error {
	fs := newFlags("volume format")
	header := fs.String("header", "", "detached header file to create (default: header in place on --device)")
	device := fs.String("device", "", "block device or file for the encrypted data")
	passFile := fs.String("passphrase-file", "", "file whose exact bytes are the passphrase")
	iter := fs.Int("pbkdf2-iterations", luks2.DefaultPBKDF2Iterations, "PBKDF2-SHA256 iterations of the keyslot")
	label := fs.String("label", "", "LUKS2 label")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *device == "" || fs.NArg() > 0 {
		return fmt.Errorf("--device is required and no positional arguments: %w", errUsage)
	}
	pass, err := readPassphrase(*passFile)
	if err != nil {
		return err
	}
	defer luks2.Zero(pass)
	return cryptvol.Format(ctx, cryptvol.FormatOptions{
		Header: *header, Device: *device, Passphrase: pass, Label: *label,
		KDF: luks2.KDFParams{Type: "pbkdf2", Iterations: *iter},
	})
}

// serveRequest is what the parent sends the engine process, followed on
// the same pipe by the passphrase bytes (open only).
type serveRequest struct {
	Op         string `json:"op"` // "open" or "create"
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

// volumeState is the per-volume state file. It never holds a secret.
type volumeState struct {
	cryptvol.Info
	PID       int    `json:"pid"`
	StartTime uint64 `json:"start_time"` // /proc/PID/stat field 22: guards against PID reuse
	Log       string `json:"log"`
}

func statePaths(stateDir, mountDir string) (abs, state, logPath string, err error) {
	abs, err = filepath.Abs(mountDir)
	if err != nil {
		return "", "", "", fmt.Errorf("mount directory: %w", err)
	}
	sum := sha256.Sum256([]byte(abs))
	base := filepath.Join(stateDir, hex.EncodeToString(sum[:8]))
	return abs, base + ".json", base + ".log", nil
}

type engineFlags struct{ engine, runtimeDir, stateDir *string }

func addEngineFlags(fs interface {
	String(name, value, usage string) *string
}) engineFlags {
	return engineFlags{
		engine:     fs.String("engine", cryptvol.EngineAuto, "crypto engine: auto, dmcrypt or userspace"),
		runtimeDir: fs.String("runtime-dir", "", "userspace engine's FUSE mounts (default /run/cocoon/cryptvol)"),
		stateDir:   fs.String("state-dir", defaultVolumeStateDir, "where volume state files live"),
	}
}

func runVolumeOpen(ctx context.Context, args []string) error {
	fs := newFlags("volume open")
	header := fs.String("header", "", "detached header (default: header in place on --device)")
	device := fs.String("device", "", "block device or file with the encrypted data")
	passFile := fs.String("passphrase-file", "", "file whose exact bytes are the passphrase")
	mount := fs.String("mount", "", "directory to mount the ext4 file system on")
	mkfs := fs.Bool("mkfs", false, "create ext4 when the volume holds no file system yet")
	ef := addEngineFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *device == "" || *mount == "" || fs.NArg() > 0 {
		return fmt.Errorf("--device and --mount are required: %w", errUsage)
	}
	pass, err := readPassphrase(*passFile)
	if err != nil {
		return err
	}
	defer luks2.Zero(pass)
	return startEngine(ctx, serveRequest{
		Op: "open", Header: *header, Device: *device, MountDir: *mount, Mkfs: *mkfs,
		Engine: *ef.engine, RuntimeDir: *ef.runtimeDir, StateDir: *ef.stateDir,
	}, pass)
}

// parseSize accepts bytes or a number with K, M, G or T (powers of 1024).
func parseSize(s string) (int64, error) {
	mult := int64(1)
	t := strings.TrimSuffix(strings.ToUpper(strings.TrimSpace(s)), "B")
	t = strings.TrimSuffix(t, "I")
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		}
		if mult != 1 {
			t = t[:n-1]
		}
	}
	v, err := strconv.ParseInt(t, 10, 64)
	if err != nil || v <= 0 || v > (1<<62)/mult {
		return 0, fmt.Errorf("size %q: want a positive number of bytes, optionally with K, M, G or T", s)
	}
	return v * mult, nil
}

func runVolumeCreate(ctx context.Context, args []string) error {
	fs := newFlags("volume create")
	backing := fs.String("backing", "", "file (created, sparse) or block device for the ciphertext")
	sizeFlag := fs.String("size", "", "size of the backing file, e.g. 1G")
	mount := fs.String("mount", "", "directory to mount the ext4 file system on")
	ef := addEngineFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *backing == "" || *mount == "" || fs.NArg() > 0 {
		return fmt.Errorf("--backing and --mount are required: %w", errUsage)
	}
	var size int64
	if *sizeFlag != "" {
		var err error
		if size, err = parseSize(*sizeFlag); err != nil {
			return fmt.Errorf("%v: %w", err, errUsage)
		}
	}
	return startEngine(ctx, serveRequest{
		Op: "create", Backing: *backing, Size: size, MountDir: *mount,
		Engine: *ef.engine, RuntimeDir: *ef.runtimeDir, StateDir: *ef.stateDir,
	}, nil)
}

// startEngine re-executes cocoonctl as a detached "volume serve" process,
// hands it the request and waits until it reports the volume mounted.
func startEngine(ctx context.Context, req serveRequest, secret []byte) error {
	abs, statePath, logPath, err := statePaths(req.StateDir, req.MountDir)
	if err != nil {
		return err
	}
	req.MountDir = abs
	if st, err := readState(statePath); err == nil && processAlive(st.PID, st.StartTime) {
		return fmt.Errorf("%s is already served by engine process %d", abs, st.PID)
	}
	if err := os.MkdirAll(req.StateDir, 0o700); err != nil {
		return fmt.Errorf("creating state directory: %w", err)
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("locating cocoonctl: %w", err)
	}
	logFile, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("opening engine log: %w", err)
	}
	defer logFile.Close()
	reqR, reqW, err := os.Pipe()
	if err != nil {
		return err
	}
	statR, statW, err := os.Pipe()
	if err != nil {
		reqR.Close()
		reqW.Close()
		return err
	}
	defer statR.Close()
	cmd := exec.Command(self, "volume", "serve")
	cmd.ExtraFiles = []*os.File{reqR, statW} // fds 3 and 4
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	reqR.Close()
	statW.Close()
	if err != nil {
		reqW.Close()
		return fmt.Errorf("starting engine process: %w", err)
	}
	js, _ := json.Marshal(req)
	_, werr := reqW.Write(append(js, '\n'))
	if werr == nil && len(secret) > 0 {
		_, werr = reqW.Write(secret)
	}
	reqW.Close()
	// Our own cancellation (SIGTERM, SIGINT) reaches the engine process,
	// which abandons the open and reports.
	stopForward := context.AfterFunc(ctx, func() { cmd.Process.Signal(syscall.SIGTERM) })
	status, _ := io.ReadAll(statR)
	stopForward()
	if string(status) == "ok\n" && werr == nil {
		pid := cmd.Process.Pid
		cmd.Process.Release()
		fmt.Printf("mounted %s (engine process %d, log %s)\n", abs, pid, logPath)
		return nil
	}
	cmd.Wait()
	msg := strings.TrimPrefix(strings.TrimSpace(string(status)), "error: ")
	if msg == "" {
		msg = "engine process exited without reporting; see " + logPath
	}
	return fmt.Errorf("%s: %s", req.Op, msg)
}

// runVolumeServe is the engine process. It opens the volume, writes the
// state file, reports "ok" on fd 4, then serves until SIGTERM (close) or
// SIGUSR1 (destroy).
func runVolumeServe(ctx context.Context, args []string) error {
	reqPipe := os.NewFile(3, "request")
	statPipe := os.NewFile(4, "status")
	if reqPipe == nil || statPipe == nil {
		return errors.New("volume serve is started by volume open/create, not by hand")
	}
	// Our own signal handling: SIGTERM/SIGINT close, SIGUSR1 destroys.
	signal.Reset(os.Interrupt, syscall.SIGTERM)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, os.Interrupt, syscall.SIGUSR1)
	signal.Ignore(syscall.SIGHUP, syscall.SIGPIPE)
	ctx = context.WithoutCancel(ctx)

	fail := func(err error) error {
		fmt.Fprintf(statPipe, "error: %v\n", err)
		statPipe.Close()
		return err
	}
	br := bufio.NewReader(reqPipe)
	line, err := br.ReadBytes('\n')
	if err != nil {
		return fail(fmt.Errorf("reading request: %w", err))
	}
	var req serveRequest
	if err := json.Unmarshal(line, &req); err != nil {
		return fail(fmt.Errorf("decoding request: %w", err))
	}
	secret, err := io.ReadAll(br)
	reqPipe.Close()
	if err != nil {
		return fail(fmt.Errorf("reading passphrase: %w", err))
	}
	_, statePath, logPath, err := statePaths(req.StateDir, req.MountDir)
	if err != nil {
		return fail(err)
	}
	// A signal while the volume is being opened (a key derivation can take
	// long, far longer with a hostile header) cancels the open; once it is
	// open, signals close or destroy it in the loop below.
	openCtx, cancelOpen := context.WithCancel(ctx)
	opening := make(chan struct{})
	early := make(chan os.Signal, 1)
	go func() {
		select {
		case sig := <-sigs:
			early <- sig
			cancelOpen()
		case <-opening:
		}
	}()
	var v *cryptvol.Volume
	switch req.Op {
	case "open":
		v, err = cryptvol.Open(openCtx, cryptvol.OpenOptions{
			Header: req.Header, Device: req.Device, Passphrase: secret, MountDir: req.MountDir,
			Mkfs: req.Mkfs, Engine: req.Engine, RuntimeDir: req.RuntimeDir,
		})
	case "create":
		v, err = cryptvol.CreateEphemeral(openCtx, cryptvol.EphemeralOptions{
			Backing: req.Backing, Size: req.Size, MountDir: req.MountDir, Engine: req.Engine, RuntimeDir: req.RuntimeDir,
		})
	default:
		err = fmt.Errorf("unknown operation %q", req.Op)
	}
	luks2.Zero(secret)
	close(opening)
	select {
	case sig := <-early: // the signal came while opening: hand it to the loop
		select {
		case sigs <- sig:
		default: // another one is already queued
		}
	default:
	}
	if err != nil {
		return fail(err)
	}
	st := volumeState{Info: v.Info(), PID: os.Getpid(), StartTime: processStartTime(os.Getpid()), Log: logPath}
	if err := writeState(statePath, &st); err != nil {
		return fail(errors.Join(err, v.Close(ctx)))
	}
	fmt.Fprint(statPipe, "ok\n")
	statPipe.Close()
	log.G(ctx).WithFields(log.Fields{"mount": req.MountDir, "engine": v.Engine()}).Info("engine process serving")

	for sig := range sigs {
		var err error
		if sig == syscall.SIGUSR1 {
			err = v.Destroy(ctx)
		} else {
			err = v.Close(ctx)
		}
		if err != nil {
			// Still mounted (busy): keep serving so no data is lost.
			log.G(ctx).WithError(err).WithField("signal", sig.String()).Error("volume not released; still serving")
			continue
		}
		if err := os.Remove(statePath); err != nil && !errors.Is(err, os.ErrNotExist) {
			log.G(ctx).WithError(err).Warn("removing state file")
		}
		log.G(ctx).WithField("signal", sig.String()).Info("volume released; engine process exiting")
		return nil
	}
	return nil
}

func writeState(path string, st *volumeState) error {
	b, err := json.MarshalIndent(st, "", "  ")
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

func readState(path string) (*volumeState, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var st volumeState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("state file %s: %w", path, err)
	}
	return &st, nil
}

// processStartTime returns field 22 of /proc/PID/stat (0 if unknown).
func processStartTime(pid int) uint64 {
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

// processAlive reports whether pid is still the engine process we started
// (running, not a zombie, same start time).
func processAlive(pid int, start uint64) bool {
	if pid <= 0 {
		return false
	}
	got := processStartTime(pid)
	return got != 0 && got == start
}

func runVolumeClose(ctx context.Context, args []string) error {
	return stopVolume(ctx, "volume close", args, false)
}

func runVolumeDestroy(ctx context.Context, args []string) error {
	return stopVolume(ctx, "volume destroy", args, true)
}

func stopVolume(ctx context.Context, name string, args []string, destroy bool) error {
	fs := newFlags(name)
	stateDir := fs.String("state-dir", defaultVolumeStateDir, "where volume state files live")
	timeout := fs.Duration("timeout", 60*time.Second, "how long to wait for the engine process")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("want exactly one mount directory: %w", errUsage)
	}
	abs, statePath, _, err := statePaths(*stateDir, fs.Arg(0))
	if err != nil {
		return err
	}
	st, err := readState(statePath)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("no cocoon volume is mounted at %s", abs)
	}
	if err != nil {
		return err
	}
	if processAlive(st.PID, st.StartTime) {
		sig := syscall.SIGTERM
		if destroy {
			sig = syscall.SIGUSR1
		}
		if err := syscall.Kill(st.PID, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("signalling engine process %d: %w", st.PID, err)
		}
		deadline := time.Now().Add(*timeout)
		for processAlive(st.PID, st.StartTime) {
			if time.Now().After(deadline) {
				return fmt.Errorf("engine process %d still serving %s after %v (file system busy?); see %s", st.PID, abs, *timeout, st.Log)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if _, err := os.Stat(statePath); errors.Is(err, os.ErrNotExist) {
			if destroy {
				os.Remove(st.Log) // nothing left to debug
			}
			return nil // clean exit: the engine released everything
		}
	}
	// The engine process is gone but left state behind: it crashed.
	log.G(ctx).WithFields(log.Fields{"mount": abs, "pid": st.PID}).Warn("engine process gone; cleaning up after it")
	return cleanupAfterCrash(ctx, st, statePath, destroy)
}

func cleanupAfterCrash(ctx context.Context, st *volumeState, statePath string, destroy bool) error {
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
	if destroy && len(errs) == 0 {
		switch {
		case st.Ephemeral:
			// The header died with the process; remove only a backing
			// file the engine created, never a device the user named.
			if st.CreatedBacking != "" {
				if err := os.Remove(st.CreatedBacking); err != nil && !errors.Is(err, os.ErrNotExist) {
					errs = append(errs, err)
				}
			}
		case st.Header != "":
			errs = append(errs, cryptvol.WipeHeader(st.Header, 0, true))
		case st.Device != "" && !st.Ephemeral:
			errs = append(errs, cryptvol.WipeHeader(st.Device, 0, false))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if destroy {
		os.Remove(st.Log)
	}
	return os.Remove(statePath)
}
