package harness

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"
)

// What a kata-agent does around cocoond in a Kata guest: it talks ttRPC to
// the CDH and AA sockets, runs the bundles PullImage made with runc, and
// hands SecureMount block devices.

// DialTTRPC connects a ttRPC client to the unix socket at path, as the
// kata-agent connects to unix:///run/confidential-containers/cdh.sock; the
// client is closed at cleanup.
func (e *Env) DialTTRPC(ctx context.Context, path string) (*ttrpc.Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("dialing %s: %w", path, err)
	}
	c := ttrpc.NewClient(conn)
	e.TB.Cleanup(func() { _ = c.Close() })
	return c, nil
}

// LoopDevice is a loop device over a sparse file in the work directory.
type LoopDevice struct {
	// Path is /dev/loopN; File the backing file.
	Path, File string
	// Major and Minor are the device numbers ("deviceId" MAJ:MIN).
	Major, Minor uint32
}

// DeviceID is "MAJ:MIN", as the kata-agent names a block device to
// SecureMount.
func (l *LoopDevice) DeviceID() string { return fmt.Sprintf("%d:%d", l.Major, l.Minor) }

// NewLoopDevice attaches a loop device (losetup --find) to a new sparse
// file of size bytes named name in the work directory; it is detached at
// cleanup (lazily by the kernel if something still holds it then).
func (e *Env) NewLoopDevice(ctx context.Context, name string, size int64) (*LoopDevice, error) {
	file := e.Path(name)
	f, err := os.OpenFile(file, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, err
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	out, err := runTool(ctx, e, "losetup", "--find", "--show", file)
	if err != nil {
		return nil, err
	}
	l := &LoopDevice{Path: strings.TrimSpace(out), File: file}
	e.TB.Cleanup(func() {
		if out, err := exec.Command("losetup", "--detach", l.Path).CombinedOutput(); err != nil {
			e.TB.Logf("cleanup: losetup --detach %s: %v: %s", l.Path, err, bytes.TrimSpace(out))
		}
	})
	var st unix.Stat_t
	if err := unix.Stat(l.Path, &st); err != nil {
		return nil, fmt.Errorf("stat %s: %w", l.Path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return nil, fmt.Errorf("losetup printed %q, which is not a block device", l.Path)
	}
	l.Major, l.Minor = unix.Major(st.Rdev), unix.Minor(st.Rdev)
	e.TB.Logf("loop device %s (%s) over %s", l.Path, l.DeviceID(), file)
	return l, nil
}

// RuncRun runs the OCI bundle at bundle as container id with the
// machine's runc (state under the work directory) in the foreground, as the
// kata-agent starts a container on the bundle PullImage made, and returns
// its output. The container is deleted afterwards, and again (forcibly) at
// cleanup.
func (e *Env) RuncRun(ctx context.Context, bundle, id string) (string, error) {
	runc, err := exec.LookPath("runc")
	if err != nil {
		return "", fmt.Errorf("runc not on PATH (run `make e2e-tools`): %w", err)
	}
	state := e.Path("runc-state")
	if err := os.MkdirAll(state, 0o700); err != nil {
		return "", err
	}
	del := func() error {
		out, err := exec.Command(runc, "--root", state, "delete", "--force", id).CombinedOutput()
		if err != nil && !strings.Contains(string(out), "does not exist") {
			return fmt.Errorf("runc delete %s: %w: %s", id, err, bytes.TrimSpace(out))
		}
		return nil
	}
	e.TB.Cleanup(func() {
		if err := del(); err != nil {
			e.TB.Logf("cleanup: %v", err)
		}
	})
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, runc, "--root", state, "run", "--bundle", bundle, id)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = 5 * time.Second
	err = cmd.Run()
	if derr := del(); err == nil {
		err = derr
	}
	if err != nil {
		return out.String(), fmt.Errorf("runc run --bundle %s %s: %w: %s", bundle, id, err, tailLines(out.String(), 20))
	}
	return out.String(), nil
}

// BlobGets counts the successful GETs of blob digest d of repository repo
// in the registry's request log so far.
func (r *Registry) BlobGets(repo, d string) int { return countBlobGets(r.Proc.Log(), repo, d) }

// countBlobGets reads crane's registry log, which has one "DATE TIME METHOD
// URL" line per request and appends the status and error code for a
// failed one.
func countBlobGets(log, repo, d string) int {
	n := 0
	want := "/v2/" + repo + "/blobs/" + d
	for _, line := range strings.Split(log, "\n") {
		if f := strings.Fields(line); len(f) == 4 && f[2] == "GET" && f[3] == want {
			n++
		}
	}
	return n
}
