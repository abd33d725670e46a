package harness

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/moby/sys/mountinfo"
)

// cocoond with [lazy] enable = true starts one detached lazy FUSE server
// per root (fusefs/server), in a session of its own: it outlives cocoond
// on purpose, so neither Process.Stop nor Pdeathsig ends it. Its state
// directory is ROOT/lazy-server; server.json names its PID.

// LazyServerDir is the state directory of the lazy FUSE server of this
// cocoond's root.
func (c *Cocoond) LazyServerDir() string { return filepath.Join(c.Root, "lazy-server") }

// LazyServerLog returns the lazy FUSE server's log so far ("" when it
// never ran).
func (c *Cocoond) LazyServerLog() string {
	b, _ := os.ReadFile(filepath.Join(c.LazyServerDir(), "server.log"))
	return string(b)
}

// LazyServerPID returns the PID of the live lazy FUSE server (0 when none
// runs: no state file, or its process is gone).
func (c *Cocoond) LazyServerPID() int { return liveLazyServer(c.LazyServerDir()) }

// liveLazyServer reads stateDir/server.json and returns its PID if that
// process still runs (same start time: PIDs are reused), else 0.
func liveLazyServer(stateDir string) int {
	b, err := os.ReadFile(filepath.Join(stateDir, "server.json"))
	if err != nil {
		return 0
	}
	var st struct {
		PID       int    `json:"pid"`
		StartTime uint64 `json:"start_time"`
	}
	if json.Unmarshal(b, &st) != nil || st.PID <= 0 {
		return 0
	}
	if processIdentity(st.PID) != fmt.Sprintf("%d %d", st.PID, st.StartTime) {
		return 0
	}
	return st.PID
}

// StopLazyServer stops the lazy FUSE server of this root, if one runs:
// SIGTERM (it unmounts every layer and exits), SIGKILL after timeout. It
// then reports any lazy FUSE mount left under the root. Stop cocoond
// first: a running cocoond starts a new server when its server is gone.
func (c *Cocoond) StopLazyServer(timeout time.Duration) error {
	if err := stopLazyServer(c.LazyServerDir(), timeout); err != nil {
		return err
	}
	left, err := LazyMountsUnder(c.Root)
	if err != nil {
		return err
	}
	if len(left) > 0 {
		return fmt.Errorf("lazy FUSE mounts left under %s after the server stopped: %s", c.Root, strings.Join(left, ", "))
	}
	return nil
}

func stopLazyServer(stateDir string, timeout time.Duration) error {
	pid := liveLazyServer(stateDir)
	if pid == 0 {
		return nil
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("lazy FUSE server %d: %w", pid, err)
	}
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if liveLazyServer(stateDir) == 0 {
			return nil
		}
	}
	err := killPID(pid)
	return errors.Join(fmt.Errorf("lazy FUSE server %d ignored SIGTERM for %v; killed", pid, timeout), err)
}

// LazyMountsUnder lists the lazy FUSE mounts (source cocoon-lazy:...) at
// or below dir.
func LazyMountsUnder(dir string) ([]string, error) {
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(filepath.Clean(dir)))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, m := range mounts {
		if strings.HasPrefix(m.Source, "cocoon-lazy:") {
			out = append(out, m.Mountpoint)
		}
	}
	return out, nil
}

// stopStaleLazyServers stops the lazy FUSE servers of the cocoond roots in
// a work directory left by a dead harness (its roots are DIR/*/root).
func stopStaleLazyServers(dir string) {
	states, _ := filepath.Glob(filepath.Join(dir, "*", "root", "lazy-server"))
	for _, sd := range states {
		_ = stopLazyServer(sd, 10*time.Second)
	}
}
