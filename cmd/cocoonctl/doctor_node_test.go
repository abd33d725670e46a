package main

import (
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/containerd/v2/plugins/snapshots/native"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/cocoon-cc/cocoon/snapshotter"
)

func wantResult(t *testing.T, got result, status, text string) {
	t.Helper()
	if got.Status != status || !strings.Contains(got.String(), text) {
		t.Errorf("got %q, want %s containing %q", got, status, text)
	}
}

// serveSnapshots serves containerd's native snapshotter (with one active
// snapshot, or none ever) and a health service on a unix socket, as
// cocoond does.
func serveSnapshots(t *testing.T, prepare bool) (string, *health.Server) {
	t.Helper()
	dir := t.TempDir()
	sn, err := native.NewSnapshotter(filepath.Join(dir, "root"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sn.Close() })
	if prepare {
		if _, err := sn.Prepare(t.Context(), "one", ""); err != nil {
			t.Fatal(err)
		}
	}
	sock := filepath.Join(dir, "cocoon.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	return sock, hs
}

func TestSnapshotsSocketCheck(t *testing.T) {
	fresh, _ := serveSnapshots(t, false)
	// containerd's metastore answers a List with "bucket does not exist"
	// until the first snapshot (the snapshots service does not map the
	// error to NotFound).
	wantResult(t, checkSnapshotsSocket(t.Context(), fresh, "cocoon"), statusWarn, "answers gRPC health and snapshots Stat, but List fails: rpc error: code = Unknown desc = bucket does not exist")
	sock, hs := serveSnapshots(t, true)
	wantResult(t, checkSnapshotsSocket(t.Context(), sock, "cocoon"), statusOK, "SERVING), snapshots Stat and List (1 snapshots)")
	hs.Shutdown() // as cocoond does when it stops
	wantResult(t, checkSnapshotsSocket(t.Context(), sock, "cocoon"), statusFail, "gRPC health is NOT_SERVING")

	dir := t.TempDir()
	wantResult(t, checkSnapshotsSocket(t.Context(), filepath.Join(dir, "absent.sock"), "cocoon"), statusFail, "start cocoond")
	// A gRPC server with a health service but no snapshots API.
	other := filepath.Join(dir, "other.sock")
	ol, err := net.Listen("unix", other)
	if err != nil {
		t.Fatal(err)
	}
	osrv := grpc.NewServer()
	healthpb.RegisterHealthServer(osrv, health.NewServer())
	go func() { _ = osrv.Serve(ol) }()
	t.Cleanup(osrv.Stop)
	wantResult(t, checkSnapshotsSocket(t.Context(), other, "cocoon"), statusFail, "Stat of an absent key answered rpc error: code = Unimplemented")
	// A socket nobody answers on (cocoond died and left it).
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	wantResult(t, checkSnapshotsSocket(t.Context(), stale, "cocoon"), statusFail, "gRPC health")
}

// TestFUSECheck needs root: it mounts a FUSE file system.
func TestFUSECheck(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting FUSE needs root")
	}
	wantResult(t, checkFUSE(t.Context(), fuseDevice), statusOK, "a FUSE file system mounts")
	wantResult(t, checkFUSE(t.Context(), filepath.Join(t.TempDir(), "fuse")), statusFail, "modprobe fuse")
}

func TestCryptEngineCheck(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("opening /dev/fuse and /dev/loop-control needs root")
	}
	noDM := func() error { return errors.New("opening /dev/mapper/control: no such device") }
	absent := filepath.Join(t.TempDir(), "absent")
	wantResult(t, checkCryptEngine(cryptProbes{deviceMapper: func() error { return nil }}), statusOK, "use dm-crypt")
	wantResult(t, checkCryptEngine(cryptProbes{deviceMapper: noDM, fuseDevice: fuseDevice, loopControl: loopControl}), statusWarn, "the userspace engine (FUSE + loop) serves")
	wantResult(t, checkCryptEngine(cryptProbes{deviceMapper: noDM, fuseDevice: fuseDevice, loopControl: absent}), statusFail, "no device-mapper (opening /dev/mapper/control: no such device) and no userspace engine (open "+absent)
	wantResult(t, checkCryptEngine(cryptProbes{deviceMapper: noDM, fuseDevice: absent, loopControl: loopControl}), statusFail, "modprobe dm_crypt")
}

func TestReadinessCheck(t *testing.T) {
	wantResult(t, checkReadiness(t.Context(), ""), statusSkip, "no --metrics-address")
	for _, tc := range []struct {
		code         int
		body         string
		status, text string
	}{
		{200, "ok\n", statusOK, "answers 200 ok"},
		{503, "[-]snapshots-socket: dial unix: refused\n", statusFail, "answers 503: [-]snapshots-socket: dial unix: refused"},
		{404, "404 page not found\n", statusWarn, "predates /readyz"},
	} {
		ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/readyz" {
				http.NotFound(w, r)
				return
			}
			w.WriteHeader(tc.code)
			_, _ = w.Write([]byte(tc.body))
		}))
		wantResult(t, checkReadiness(t.Context(), strings.TrimPrefix(ts.URL, "http://")), tc.status, tc.text)
		ts.Close()
	}
	ts := httptest.NewServer(http.NotFoundHandler())
	addr := strings.TrimPrefix(ts.URL, "http://")
	ts.Close()
	wantResult(t, checkReadiness(t.Context(), addr), statusFail, "metrics_address")
}

func TestMountHelperCheck(t *testing.T) {
	in := func(names ...string) func(string) (string, error) {
		return func(name string) (string, error) {
			for _, n := range names {
				if n == name {
					return "/usr/local/bin/" + name, nil
				}
			}
			return "", exec.ErrNotFound
		}
	}
	wantResult(t, checkMountHelper(snapshotter.DefaultKataMountType, in("nydus-overlayfs-cocoon", "mount.fuse3")), statusOK,
		"fuse.nydus-overlayfs-cocoon mounts run /usr/local/bin/nydus-overlayfs-cocoon through /usr/local/bin/mount.fuse3")
	wantResult(t, checkMountHelper(snapshotter.DefaultKataMountType, in("mount.fuse")), statusFail, "install nydus-overlayfs-cocoon (cmd/nydus-overlayfs-cocoon) in containerd's PATH")
	wantResult(t, checkMountHelper(snapshotter.DefaultKataMountType, in("nydus-overlayfs-cocoon")), statusFail, "neither mount.fuse nor mount.fuse3")
	wantResult(t, checkMountHelper("overlay", in("nydus-overlayfs-cocoon", "mount.fuse")), statusFail, "kata_mount_type")
	wantResult(t, checkMountHelper("fuse./opt/cocoon/nydus-overlayfs-cocoon", exec.LookPath), statusFail, "/opt/cocoon/nydus-overlayfs-cocoon: ")
}
