package harness

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Containerd is a containerd v2 daemon with its own root, state and socket
// under the work directory.
type Containerd struct {
	Name    string
	Dir     string
	Address string
	Config  string // path of config.toml
	Proc    *Process

	env *Env
}

// ContainerdOptions configure StartContainerd.
type ContainerdOptions struct {
	// Name distinguishes several containerds in one run (default
	// "containerd"); it names the directory and the log file.
	Name string
	// Fragments are appended to the generated config.toml verbatim, e.g.
	// the output of `cocoonctl containerd-config`.
	Fragments []string
	// LogLevel is containerd's log level (default "info").
	LogLevel string
	// CRI enables the CRI plugin (for crictl) and NRI, with their sockets,
	// state and registry configuration under the work directory; see
	// criConfig.
	CRI *CRIOptions
	// PathDirs come first on containerd's PATH, which its shims inherit
	// (e.g. a directory holding mount helpers).
	PathDirs []string
	// Env is added to containerd's environment (and its shims').
	Env []string
}

// StartContainerd writes a config.toml (version 3; root, state, socket all
// under the work directory) and starts containerd with the harness's tool
// directory first on PATH, so that its runc shim is the one used.
// Cleanup tears down every task and container, stops containerd, kills any
// shim it left behind, then (through Env) unmounts what remains.
func (e *Env) StartContainerd(ctx context.Context, o ContainerdOptions) (*Containerd, error) {
	if o.Name == "" {
		o.Name = "containerd"
	}
	if o.LogLevel == "" {
		o.LogLevel = "info"
	}
	dir := e.Path(o.Name)
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return nil, err
	}
	c := &Containerd{Name: o.Name, Dir: dir, Address: filepath.Join(dir, "c.sock"), Config: filepath.Join(dir, "config.toml"), env: e}
	var b strings.Builder
	disabled := `# No CRI server (ctr only) and no NRI socket in /var/run.
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.nri.v1.nri"]`
	if o.CRI != nil {
		disabled = "# CRI and NRI enabled (criConfig below)."
	}
	fmt.Fprintf(&b, `# Written by the cocoon e2e harness.
version = 3
root = %q
state = %q
%s

[grpc]
  address = %q

[ttrpc]
  address = %q

[debug]
  level = %q

[plugins."io.containerd.internal.v1.opt"]
  path = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), disabled, c.Address, c.Address+".ttrpc", o.LogLevel, filepath.Join(dir, "opt"))
	if o.CRI != nil {
		cfg, err := c.criConfig(*o.CRI)
		if err != nil {
			return nil, err
		}
		b.WriteString(cfg)
	}
	for _, f := range o.Fragments {
		b.WriteString("\n")
		b.WriteString(f)
		if !strings.HasSuffix(f, "\n") {
			b.WriteString("\n")
		}
	}
	if err := os.WriteFile(c.Config, []byte(b.String()), 0o644); err != nil {
		return nil, err
	}
	// Registered first so that it runs last: after containerd has been
	// stopped, kill any shim (and its containers) that still names our
	// socket.
	e.TB.Cleanup(c.killStrayShims)
	path := strings.Join(append(slices.Clone(o.PathDirs), e.ToolBin, "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"), ":")
	p, err := e.StartProcess(o.Name, e.Tool("containerd"), []string{"--config", c.Config}, append([]string{"PATH=" + path}, o.Env...))
	if err != nil {
		return nil, err
	}
	c.Proc = p
	// Registered after the process: runs before it is stopped.
	e.TB.Cleanup(c.teardown)
	if err := p.WaitSocket(ctx, c.Address); err != nil {
		return nil, err
	}
	// The socket accepts before every plugin is loaded; ctr version
	// answering means the API is up.
	if _, err := c.Ctr(ctx, "version"); err != nil {
		return nil, fmt.Errorf("containerd not answering: %w", err)
	}
	return c, nil
}

// Ctr runs `ctr -a SOCKET args...` and returns stdout; the error carries
// stderr (or the end of stdout). For `run` and `tasks exec` it adds
// --fifo-dir (and for run --runc-root) under the work directory unless
// given, so that stdio FIFOs and runc state do not land in the
// machine-wide /run/containerd.
func (c *Containerd) Ctr(ctx context.Context, args ...string) (string, error) {
	return runTool(ctx, c.env, c.env.Tool("ctr"), append([]string{"-a", c.Address}, c.localize(args)...)...)
}

// FIFODir and RuncRoot are where Ctr keeps run/exec FIFOs and runc state.
func (c *Containerd) FIFODir() string  { return filepath.Join(c.Dir, "fifo") }
func (c *Containerd) RuncRoot() string { return filepath.Join(c.Dir, "runc") }

func (c *Containerd) localize(args []string) []string {
	// Skip global flags such as -n NS to find the command (every global
	// flag is assumed to take a value; write boolean ones as --flag=true).
	i := 0
	for i < len(args) && strings.HasPrefix(args[i], "-") {
		if !strings.Contains(args[i], "=") {
			i++ // the flag's value
		}
		i++
	}
	var cmdLen int
	var extra []string
	switch {
	case i < len(args) && args[i] == "run":
		cmdLen = 1
		if !slices.Contains(args, "--fifo-dir") {
			extra = append(extra, "--fifo-dir", c.FIFODir())
		}
		if !slices.Contains(args, "--runc-root") {
			extra = append(extra, "--runc-root", c.RuncRoot())
		}
	case i+1 < len(args) && (args[i] == "tasks" || args[i] == "t" || args[i] == "task") && args[i+1] == "exec":
		cmdLen = 2
		if !slices.Contains(args, "--fifo-dir") {
			extra = append(extra, "--fifo-dir", c.FIFODir())
		}
	default:
		return args
	}
	out := append([]string{}, args[:i+cmdLen]...)
	out = append(out, extra...)
	return append(out, args[i+cmdLen:]...)
}

// ContentDigests lists the digests in containerd's content store
// (`ctr content ls`), in the default namespace or the one given (CRI's is
// k8s.io).
func (c *Containerd) ContentDigests(ctx context.Context, namespace ...string) ([]string, error) {
	ns := "default"
	if len(namespace) > 0 {
		ns = namespace[0]
	}
	out, err := c.Ctr(ctx, "-n", ns, "content", "ls", "-q")
	if err != nil {
		return nil, err
	}
	return strings.Fields(out), nil
}

// Snapshot is one line of `ctr snapshots ls`.
type Snapshot struct {
	Key, Parent, Kind string
}

// Snapshots lists the snapshots of a snapshotter.
func (c *Containerd) Snapshots(ctx context.Context, snapshotter string) ([]Snapshot, error) {
	out, err := c.Ctr(ctx, "snapshots", "--snapshotter", snapshotter, "ls")
	if err != nil {
		return nil, err
	}
	var snaps []Snapshot
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || f[0] == "KEY" {
			continue
		}
		s := Snapshot{Key: f[0]}
		switch len(f) {
		case 2: // no parent
			s.Kind = f[1]
		case 3:
			s.Parent, s.Kind = f[1], f[2]
		default:
			return nil, fmt.Errorf("unexpected `ctr snapshots ls` line %q", sc.Text())
		}
		snaps = append(snaps, s)
	}
	return snaps, nil
}

// teardown deletes every task and container in every namespace while
// containerd still runs. Errors are logged, never fatal: the later
// cleanups kill whatever survives.
func (c *Containerd) teardown() {
	if c.Proc.Exited() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	nss, err := c.Ctr(ctx, "namespaces", "ls", "-q")
	if err != nil {
		c.env.TB.Logf("cleanup: %v", err)
		return
	}
	for _, ns := range strings.Fields(nss) {
		tasks, err := c.Ctr(ctx, "-n", ns, "tasks", "ls", "-q")
		if err != nil {
			c.env.TB.Logf("cleanup: %v", err)
		}
		for _, id := range strings.Fields(tasks) {
			if _, err := c.Ctr(ctx, "-n", ns, "tasks", "delete", "--force", id); err != nil {
				c.env.TB.Logf("cleanup: %v", err)
			}
		}
		ctrs, err := c.Ctr(ctx, "-n", ns, "containers", "ls", "-q")
		if err != nil {
			c.env.TB.Logf("cleanup: %v", err)
		}
		for _, id := range strings.Fields(ctrs) {
			if _, err := c.Ctr(ctx, "-n", ns, "containers", "delete", id); err != nil {
				c.env.TB.Logf("cleanup: %v", err)
			}
		}
	}
}

// killStrayShims kills, by PID, every shim whose command line names this
// containerd's socket, and the container processes below it.
func (c *Containerd) killStrayShims() {
	for pid, argv := range procCmdlines() {
		if !strings.Contains(filepath.Base(argv[0]), "containerd-shim") || !containsArg(argv, c.Address) {
			continue
		}
		c.env.TB.Logf("cleanup: killing leftover shim pid %d (%s) and its children", pid, strings.Join(argv, " "))
		for _, child := range descendants(pid) {
			if err := killPID(child); err != nil {
				c.env.TB.Logf("cleanup: %v", err)
			}
		}
		if err := killPID(pid); err != nil {
			c.env.TB.Logf("cleanup: %v", err)
		}
		ns, id := argValue(argv, "-namespace"), argValue(argv, "-id")
		if ns == "" || id == "" {
			continue
		}
		// A killed shim leaves its container's runc state and cgroups
		// (machine-wide, /sys/fs/cgroup/*/<ns>/<id>): runc delete removes
		// both. The state is under RuncRoot when the container was started
		// through Ctr, else in containerd's default root.
		for _, root := range []string{filepath.Join(c.RuncRoot(), ns), filepath.Join("/run/containerd/runc", ns)} {
			if _, err := os.Stat(filepath.Join(root, id)); err != nil {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			if _, err := runTool(ctx, c.env, "runc", "--root", root, "delete", "--force", id); err != nil {
				c.env.TB.Logf("cleanup: %v", err)
			}
			cancel()
		}
		// Nor can it remove its socket, which containerd keeps in the
		// machine-wide /run/containerd/s.
		if err := os.Remove(ShimSocketPath(c.Address, ns, id)); err != nil && !errors.Is(err, os.ErrNotExist) {
			c.env.TB.Logf("cleanup: %v", err)
		}
	}
}

// ShimSocketPath is where containerd 2.x's runc shim listens for the
// container id in namespace ns of the containerd at address (containerd's
// shim.SocketAddress).
func ShimSocketPath(address, ns, id string) string {
	sum := sha256.Sum256([]byte(filepath.Join(address, ns, id)))
	return filepath.Join("/run/containerd/s", hex.EncodeToString(sum[:]))
}

// argValue returns the value following flag in argv.
func argValue(argv []string, flag string) string {
	for i := 0; i+1 < len(argv); i++ {
		if argv[i] == flag {
			return argv[i+1]
		}
	}
	return ""
}

func containsArg(argv []string, s string) bool {
	for _, a := range argv {
		if a == s || strings.HasSuffix(a, "="+s) {
			return true
		}
	}
	return false
}

// ContainerdVersion returns "containerd vX.Y.Z" as reported by the daemon,
// or "containerd" if it cannot be read.
func ContainerdVersion(ctx context.Context, c *Containerd) string {
	out, err := c.Ctr(ctx, "version")
	if err != nil {
		return "containerd"
	}
	// The server section comes last: "Server:\n  Version:  v2.4.2..."
	_, server, ok := strings.Cut(out, "Server:")
	if !ok {
		return "containerd"
	}
	for _, line := range strings.Split(server, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok && k == "Version" {
			return "containerd " + strings.TrimSpace(v)
		}
	}
	return "containerd"
}
