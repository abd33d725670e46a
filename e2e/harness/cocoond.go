package harness

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Cocoond is a cocoond daemon with its root and socket under the work
// directory.
type Cocoond struct {
	Root    string
	Address string
	// CDHSocket and AASocket are the unix sockets of the Confidential Data
	// Hub and Attestation Agent ttRPC services (kata-guest mode only).
	CDHSocket, AASocket string
	// MetricsAddr is "127.0.0.1:PORT" (Prometheus text at /metrics).
	MetricsAddr string
	Proc        *Process

	env  *Env
	bin  string
	args []string
}

// CocoondOptions configure StartCocoond.
type CocoondOptions struct {
	// InsecureRegistries are HOST:PORT registries reached over plain HTTP.
	InsecureRegistries []string
	// Config, when not empty, is written to a file passed with --config.
	Config string
	// LogLevel is "debug" (default) or "info".
	LogLevel string
	// ExtraArgs are appended to cocoond's command line (e.g. --rest-api).
	ExtraArgs []string
	// KataGuest runs cocoond with --mode kata-guest: the Attestation Agent
	// and Confidential Data Hub ttRPC services on CDHSocket and AASocket
	// (passed as --cdh-socket and --aa-socket), no containerd snapshots
	// socket.
	KataGuest bool
	// Name is the work subdirectory of this daemon (its root, sockets and
	// config); default "cocoon". Two daemons of one Env need two names.
	Name string
}

// StartCocoond starts cocoond and waits until its socket accepts
// connections.
func (e *Env) StartCocoond(ctx context.Context, o CocoondOptions) (*Cocoond, error) {
	bin, err := e.CocoonBinary("cocoond")
	if err != nil {
		return nil, err
	}
	if o.LogLevel == "" {
		o.LogLevel = "debug"
	}
	if o.Name == "" {
		o.Name = "cocoon"
	}
	dir := e.Path(o.Name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	var cfg string
	if o.Config != "" {
		cfg = filepath.Join(dir, "cocoond.toml")
		if err := os.WriteFile(cfg, []byte(o.Config), 0o600); err != nil {
			return nil, err
		}
	}
	// The lazy FUSE server outlives cocoond by design: stop it (and check
	// that it left no mount) after the last cocoond of this root stopped.
	root := filepath.Join(dir, "root")
	e.TB.Cleanup(func() {
		if err := (&Cocoond{Root: root}).StopLazyServer(15 * time.Second); err != nil {
			e.TB.Logf("cleanup: %v", err)
		}
	})
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port, err := FreePort()
		if err != nil {
			return nil, err
		}
		c := &Cocoond{
			Root:        root,
			Address:     filepath.Join(dir, "cocoon.sock"),
			MetricsAddr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
			env:         e,
			bin:         bin,
		}
		c.args = []string{"--root", c.Root, "--address", c.Address, "--metrics-address", c.MetricsAddr, "--log-level", o.LogLevel}
		if cfg != "" {
			c.args = append(c.args, "--config", cfg)
		}
		for _, r := range o.InsecureRegistries {
			c.args = append(c.args, "--insecure-registry", r)
		}
		if o.KataGuest {
			c.CDHSocket, c.AASocket = filepath.Join(dir, "cdh.sock"), filepath.Join(dir, "aa.sock")
			c.args = append(c.args, "--mode", "kata-guest", "--cdh-socket", "unix://"+c.CDHSocket, "--aa-socket", "unix://"+c.AASocket)
		}
		c.args = append(c.args, o.ExtraArgs...)
		if lastErr = c.Start(ctx); lastErr == nil {
			return c, nil
		}
		if !c.Proc.Exited() {
			return nil, lastErr
		}
		// It exited: maybe the metrics port was taken in the meantime.
	}
	return nil, lastErr
}

// Start starts (or, after Kill, restarts) cocoond on the same root, socket
// and flags, and waits for the socket.
func (c *Cocoond) Start(ctx context.Context) error {
	if c.Proc != nil && !c.Proc.Exited() {
		return fmt.Errorf("cocoond (pid %d) is still running", c.Proc.PID())
	}
	p, err := c.env.StartProcess("cocoond", c.bin, c.args, nil)
	if err != nil {
		return err
	}
	c.Proc = p
	// A stale socket file from a killed daemon refuses connections, so
	// waiting for an accepted connection also covers restarts. In
	// kata-guest mode the AA starts first, then the CDH.
	if c.CDHSocket != "" {
		if err := p.WaitSocket(ctx, c.AASocket); err != nil {
			return err
		}
		return p.WaitSocket(ctx, c.CDHSocket)
	}
	return p.WaitSocket(ctx, c.Address)
}

// ContainerdConfig returns `cocoonctl containerd-config` for this daemon's
// socket and containerd 2.x, with extra flags (e.g. --runtime-handler).
func (c *Cocoond) ContainerdConfig(ctx context.Context, extra ...string) (string, error) {
	ctl, err := c.env.CocoonBinary("cocoonctl")
	if err != nil {
		return "", err
	}
	return runTool(ctx, c.env, ctl, append([]string{"containerd-config", "--address", c.Address, "--containerd-version", "2"}, extra...)...)
}

// Metrics scrapes /metrics and returns every sample, keyed by the series
// as written (name plus labels).
func (c *Cocoond) Metrics(ctx context.Context) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+c.MetricsAddr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scraping cocoond metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("scraping cocoond metrics: %s: %s", resp.Status, b)
	}
	return ParseMetrics(resp.Body)
}

// ParseMetrics parses the Prometheus text format (samples only).
func ParseMetrics(r io.Reader) (map[string]float64, error) {
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		// The value is the field after the series; the series may contain
		// spaces inside label values, so split at the last '}' if any.
		series, rest := line, ""
		if i := strings.LastIndexByte(line, '}'); i >= 0 {
			series, rest = line[:i+1], line[i+1:]
		} else if i := strings.IndexByte(line, ' '); i >= 0 {
			series, rest = line[:i], line[i:]
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			return nil, fmt.Errorf("metrics line without value: %q", line)
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			return nil, fmt.Errorf("metrics line %q: %w", line, err)
		}
		out[series] = v
	}
	return out, sc.Err()
}

// MetricSum adds every series of metric name (all label sets).
func MetricSum(m map[string]float64, name string) float64 {
	var sum float64
	for series, v := range m {
		if series == name || strings.HasPrefix(series, name+"{") {
			sum += v
		}
	}
	return sum
}
