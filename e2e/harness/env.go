package harness

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// ErrNotRoot is returned by New when the caller is not root: containerd,
// runc and overlay mounts need it. Tests skip on it.
var ErrNotRoot = errors.New("the end-to-end harness needs root (containerd, runc, mounts)")

// Env is one run's work directory and the binaries it uses. Everything a
// run creates lives under Dir.
type Env struct {
	TB TB
	// Dir is the run's private work directory (short, under /tmp, so that
	// unix socket paths stay below the 108-byte limit).
	Dir string
	// LogDir holds one log file per daemon started.
	LogDir string
	// Bin holds cocoon's binaries (COCOON_BIN, default <repo>/bin).
	Bin string
	// ToolBin holds containerd, ctr, the runc shim and crane
	// (COCOON_E2E_BIN, default <repo>/bin/e2e).
	ToolBin string
	// RepoRoot is the cocoon repository (for bench output).
	RepoRoot string

	mu   sync.Mutex
	logs []string
}

// requiredTools are built or installed by scripts/e2e-tools.sh.
var requiredTools = []string{"containerd", "ctr", "containerd-shim-runc-v2", "crane"}

// New creates a work directory, checks that the tools exist, and registers
// the final cleanup: unmount whatever is left under the directory, print
// and keep the daemon logs if the run failed, remove the directory.
func New(tb TB) (*Env, error) {
	tb.Helper()
	if os.Geteuid() != 0 {
		return nil, ErrNotRoot
	}
	repo, err := findRepoRoot()
	if err != nil {
		return nil, err
	}
	e := &Env{
		TB:       tb,
		Bin:      envOr("COCOON_BIN", filepath.Join(repo, "bin")),
		ToolBin:  envOr("COCOON_E2E_BIN", filepath.Join(repo, "bin", "e2e")),
		RepoRoot: repo,
	}
	for _, tool := range requiredTools {
		if _, err := os.Stat(filepath.Join(e.ToolBin, tool)); err != nil {
			return nil, fmt.Errorf("%s missing in %s (run `make e2e-tools`): %w", tool, e.ToolBin, err)
		}
	}
	if _, err := exec.LookPath("runc"); err != nil {
		return nil, fmt.Errorf("runc not on PATH (run `make e2e-tools`): %w", err)
	}
	sweepStaleWorkDirs(tb)
	dir, err := os.MkdirTemp("", workDirPrefix)
	if err != nil {
		return nil, fmt.Errorf("creating work directory: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(processIdentity(os.Getpid())), 0o644); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("recording the work directory's owner: %w", err)
	}
	e.Dir = dir
	e.LogDir = filepath.Join(dir, "logs")
	if err := os.Mkdir(e.LogDir, 0o755); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("creating log directory: %w", err)
	}
	tb.Cleanup(e.cleanup)
	return e, nil
}

// Path returns a path inside the work directory.
func (e *Env) Path(elem ...string) string {
	return filepath.Join(append([]string{e.Dir}, elem...)...)
}

// CocoonBinary returns the path of one of cocoon's binaries, or an error
// that says how to build it.
func (e *Env) CocoonBinary(name string) (string, error) {
	p := filepath.Join(e.Bin, name)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("%s missing in %s (run `make build`): %w", name, e.Bin, err)
	}
	return p, nil
}

// Tool returns the path of a tool built by scripts/e2e-tools.sh.
func (e *Env) Tool(name string) string { return filepath.Join(e.ToolBin, name) }

// newLogFile creates <LogDir>/<name>.log, or <name>-N.log for restarts.
func (e *Env) newLogFile(name string) (*os.File, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	path := filepath.Join(e.LogDir, name+".log")
	for i := 2; ; i++ {
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			break
		}
		path = filepath.Join(e.LogDir, fmt.Sprintf("%s-%d.log", name, i))
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	e.logs = append(e.logs, path)
	return f, nil
}

// DumpLogs prints the last lines of every daemon log through TB.Logf.
func (e *Env) DumpLogs(maxLines int) {
	e.mu.Lock()
	logs := append([]string(nil), e.logs...)
	e.mu.Unlock()
	for _, path := range logs {
		data, err := os.ReadFile(path)
		if err != nil {
			e.TB.Logf("reading %s: %v", path, err)
			continue
		}
		e.TB.Logf("===== %s (last %d lines) =====\n%s", filepath.Base(path), maxLines, tailLines(string(data), maxLines))
	}
}

func (e *Env) cleanup() {
	if err := UnmountUnder(e.Dir); err != nil {
		e.TB.Logf("cleanup: %v", err)
	}
	if e.TB.Failed() {
		e.DumpLogs(40)
		e.keepLogs()
	}
	if err := os.RemoveAll(e.Dir); err != nil {
		e.TB.Logf("cleanup: removing %s: %v", e.Dir, err)
	}
}

// keepLogs copies the logs of a failed run to <repo>/e2e/.work/ (ignored by
// git) so that they survive the work directory.
func (e *Env) keepLogs() {
	name := strings.NewReplacer("/", "_", " ", "_").Replace(e.TB.Name())
	dst := filepath.Join(e.RepoRoot, "e2e", ".work", fmt.Sprintf("%s-%s", name, time.Now().Format("20060102-150405")))
	if err := os.MkdirAll(dst, 0o755); err != nil {
		e.TB.Logf("keeping logs: %v", err)
		return
	}
	e.mu.Lock()
	logs := append([]string(nil), e.logs...)
	e.mu.Unlock()
	for _, src := range logs {
		data, err := os.ReadFile(src)
		if err == nil {
			err = os.WriteFile(filepath.Join(dst, filepath.Base(src)), data, 0o644)
		}
		if err != nil {
			e.TB.Logf("keeping log %s: %v", src, err)
		}
	}
	e.TB.Logf("daemon logs kept in %s", dst)
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// findRepoRoot walks up from the working directory to the directory that
// holds both go.mod and e2e/go.mod.
func findRepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := dir; ; d = filepath.Dir(d) {
		if fileExists(filepath.Join(d, "go.mod")) && fileExists(filepath.Join(d, "e2e", "go.mod")) {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("cannot find the cocoon repository above %s", dir)
		}
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

const (
	workDirPrefix = "cocoon-e2e-"
	// ownerFile in a work directory identifies the process that made it.
	ownerFile = "owner"
)

// processIdentity is "PID STARTTIME": a PID alone may be reused.
func processIdentity(pid int) string {
	// starttime is field 22 of /proc/PID/stat.
	f := ProcStatFields(pid)
	if len(f) < 20 {
		return ""
	}
	return fmt.Sprintf("%d %s", pid, f[19])
}

// sweepStaleWorkDirs removes the work directories of harness processes that
// died without cleaning up (SIGKILL, SIGPIPE). Their daemons died with them
// (Pdeathsig); their mounts and files remain. Directories whose owner is
// alive, or that have no owner file, are left alone: they may belong to a
// run in progress.
func sweepStaleWorkDirs(tb TB) {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), workDirPrefix+"*"))
	for _, dir := range dirs {
		owner, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if err != nil {
			continue
		}
		var pid int
		if _, err := fmt.Sscanf(string(owner), "%d", &pid); err != nil || pid <= 0 {
			continue
		}
		if processIdentity(pid) == string(owner) {
			continue // still running
		}
		tb.Logf("removing stale work directory %s (owner %q is gone)", dir, owner)
		stopStaleLazyServers(dir)
		if err := UnmountUnder(dir); err != nil {
			tb.Logf("stale work directory: %v", err)
			continue
		}
		if err := os.RemoveAll(dir); err != nil {
			tb.Logf("stale work directory: %v", err)
		}
	}
}
