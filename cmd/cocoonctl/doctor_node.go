package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/cocoon-cc/cocoon/cryptvol/engine/dmcrypt"
	"github.com/cocoon-cc/cocoon/snapshotter"
)

// Device nodes the FUSE and encryption checks open.
const (
	fuseDevice  = "/dev/fuse"
	loopControl = "/dev/loop-control"
)

// checkSnapshotsSocket: cocoond answers on its socket as containerd's
// proxy plugin calls it: the gRPC health service, a Stat of an absent
// snapshot (NotFound), then a List. A failing List is a warning: the
// service answers, but `ctr snapshots ls` and containerd's garbage
// collector (which walks proxy snapshotters) see the error.
func checkSnapshotsSocket(ctx context.Context, address, name string) result {
	const c = "snapshots-socket"
	start := "start cocoond (systemctl start cocoond), or pass --address: the socket proxy_plugins." + name + " names"
	logs := "check cocoond's log (journalctl -u cocoond)"
	if _, err := os.Stat(address); err != nil {
		return fail(c, err.Error(), start)
	}
	conn, err := grpc.NewClient("unix://"+address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fail(c, err.Error(), start)
	}
	defer conn.Close()
	hr, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return fail(c, fmt.Sprintf("%s: gRPC health: %v", address, err), start+" (a stale socket is left by a cocoond that died)")
	}
	if hr.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return fail(c, fmt.Sprintf("%s: gRPC health is %s", address, hr.GetStatus()), "cocoond is stopping or starting: wait, then "+logs)
	}
	sc := snapshotsapi.NewSnapshotsClient(conn)
	_, err = sc.Stat(ctx, &snapshotsapi.StatSnapshotRequest{Snapshotter: name, Key: "cocoonctl-doctor-absent"})
	if status.Code(err) != codes.NotFound {
		return fail(c, fmt.Sprintf("%s: snapshots Stat of an absent key answered %v, want NotFound", address, err), logs)
	}
	n, err := countSnapshots(ctx, sc, name)
	if err != nil {
		return warn(c, fmt.Sprintf("%s answers gRPC health and snapshots Stat, but List fails: %v", address, err), logs)
	}
	return ok(c, fmt.Sprintf("%s answers gRPC health (SERVING), snapshots Stat and List (%d snapshots)", address, n))
}

// countSnapshots lists every snapshot through the snapshots API.
func countSnapshots(ctx context.Context, sc snapshotsapi.SnapshotsClient, name string) (int, error) {
	stream, err := sc.List(ctx, &snapshotsapi.ListSnapshotsRequest{Snapshotter: name})
	if err != nil {
		return 0, err
	}
	n := 0
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return 0, err
		}
		n += len(resp.GetInfo())
	}
}

// checkFUSE: dev opens and a FUSE file system mounts. cocoon mounts FUSE
// with mount(2) itself (go-fuse DirectMountStrict in fusefs and
// secretsfs), never through fusermount, so what it needs is the device
// and CAP_SYS_ADMIN; the check mounts an empty file system on a
// temporary directory and unmounts it.
func checkFUSE(ctx context.Context, dev string) result {
	const c = "fuse"
	f, err := os.OpenFile(dev, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fail(c, err.Error(), "load the fuse module (modprobe fuse); in a container, pass the device (--device /dev/fuse)")
	}
	f.Close()
	dir, err := os.MkdirTemp("", "cocoonctl-doctor-fuse-")
	if err != nil {
		return fail(c, err.Error(), "check TMPDIR")
	}
	defer os.Remove(dir)
	srv, err := fs.Mount(dir, &fs.Inode{}, &fs.Options{MountOptions: fuse.MountOptions{DirectMountStrict: true, FsName: "cocoonctl-doctor", Name: "cocoon"}})
	if err != nil {
		return fail(c, fmt.Sprintf("%s opens, but mounting a FUSE file system failed: %v", dev, err),
			"run cocoond as root with CAP_SYS_ADMIN (cocoon mounts FUSE with mount(2), not fusermount); in a container: --cap-add SYS_ADMIN --device /dev/fuse")
	}
	if err := srv.Unmount(); err != nil {
		return warn(c, fmt.Sprintf("mounted a FUSE file system on %s but could not unmount it: %v", dir, err), "umount "+dir)
	}
	return ok(c, dev+" opens and a FUSE file system mounts (mount(2), no fusermount needed)")
}

// cryptProbes are what the encryption engine check looks at; tests
// replace them.
type cryptProbes struct {
	deviceMapper func() error // dmcrypt.Probe
	fuseDevice   string
	loopControl  string
}

func hostCryptProbes() cryptProbes {
	return cryptProbes{deviceMapper: dmcrypt.Probe, fuseDevice: fuseDevice, loopControl: loopControl}
}

// checkCryptEngine: encrypted volumes (storage volume, SecureMount) have
// an engine, chosen as cryptvol's EngineAuto does: dm-crypt when
// device-mapper answers DM_VERSION, else the userspace engine (a FUSE
// file of plaintext sectors behind a loop device).
func checkCryptEngine(p cryptProbes) result {
	const c = "crypt-engine"
	dmErr := p.deviceMapper()
	if dmErr == nil {
		return ok(c, "device-mapper answers DM_VERSION on "+dmcrypt.ControlPath+": encrypted volumes use dm-crypt")
	}
	if err := userspaceEngineUsable(p); err != nil {
		return fail(c, fmt.Sprintf("no device-mapper (%v) and no userspace engine (%v)", dmErr, err),
			"load dm_crypt (modprobe dm_crypt) or provide /dev/fuse and /dev/loop-control (modprobe fuse loop)")
	}
	return warn(c, fmt.Sprintf("no device-mapper (%v): the userspace engine (FUSE + loop) serves encrypted volumes, slower than dm-crypt", dmErr),
		"load dm_crypt (modprobe dm_crypt) and expose "+dmcrypt.ControlPath+" to use dm-crypt")
}

// userspaceEngineUsable checks the userspace engine's devices: the FUSE
// device, and loop-control handing out a free loop device.
func userspaceEngineUsable(p cryptProbes) error {
	f, err := os.OpenFile(p.fuseDevice, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	f.Close()
	ctl, err := os.OpenFile(p.loopControl, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer ctl.Close()
	if _, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE); err != nil {
		return fmt.Errorf("%s: LOOP_CTL_GET_FREE: %w", p.loopControl, err)
	}
	return nil
}

// checkReadiness asks cocoond's /readyz on its metrics address.
func checkReadiness(ctx context.Context, addr string) result {
	const c = "readiness"
	if addr == "" {
		return skip(c, "no --metrics-address: cocoond's /readyz not asked")
	}
	url := "http://" + addr + "/readyz"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fail(c, err.Error(), "pass --metrics-address as host:port (cocoond's metrics_address)")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fail(c, err.Error(), "check cocoond runs with metrics_address (--metrics-address) set to "+addr)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	text := strings.Join(strings.Fields(string(body)), " ")
	switch resp.StatusCode {
	case http.StatusOK:
		return ok(c, url+" answers 200 "+text)
	case http.StatusNotFound:
		return warn(c, url+" answers 404: this cocoond predates /readyz", "upgrade cocoond")
	}
	return fail(c, fmt.Sprintf("%s answers %d: %s", url, resp.StatusCode, text), "see the failing parts above and cocoond's log (journalctl -u cocoond)")
}

// checkMountHelper: containerd can mount a kata-host rootfs on the host
// (runc pods on the same snapshotter, image volumes copied out). For a
// "fuse.<helper>" type, containerd runs mount.fuse or mount.fuse3 (the only
// helpers it allows, containerd v2.4.2 core/mount/mount_linux.go), which
// runs <helper>; cocoon's nydus-overlayfs-cocoon also accepts containerd's
// own helper arguments, so it can stand in for a missing mount.fuse. Both
// are looked up in doctor's PATH, which should be containerd's.
func checkMountHelper(mountType string, lookPath func(string) (string, error)) result {
	const c = "mount-helper"
	helper, isFuse := strings.CutPrefix(mountType, "fuse.")
	if !isFuse || helper == "" {
		return fail(c, fmt.Sprintf("mount type %q is not fuse.<helper>", mountType), "set [snapshotter] kata_mount_type = \""+snapshotter.DefaultKataMountType+"\" (or pass --kata-mount-type as cocoond.toml has it)")
	}
	helperPath, err := lookPath(helper)
	if err != nil {
		return fail(c, fmt.Sprintf("%s: %v: containerd cannot mount kata-host root filesystems on the host (runc pods fail)", helper, err),
			"install "+helper+" (cmd/nydus-overlayfs-cocoon) in containerd's PATH, e.g. /usr/local/bin")
	}
	var fuseHelpers []string
	for _, name := range []string{"mount.fuse", "mount.fuse3"} {
		if p, err := lookPath(name); err == nil {
			fuseHelpers = append(fuseHelpers, p)
		}
	}
	if len(fuseHelpers) == 0 {
		return fail(c, fmt.Sprintf("%s is at %s, but neither mount.fuse nor mount.fuse3 is in PATH: containerd runs one of them for %s mounts", helper, helperPath, mountType),
			"install fuse (mount.fuse), or link "+helperPath+" as /usr/local/sbin/mount.fuse (it accepts containerd's helper arguments)")
	}
	return ok(c, fmt.Sprintf("%s mounts run %s through %s", mountType, helperPath, strings.Join(fuseHelpers, " or ")))
}
