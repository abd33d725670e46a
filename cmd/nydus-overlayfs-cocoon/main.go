// Command nydus-overlayfs-cocoon is the mount helper for the rootfs mounts
// cocoond returns in kata-host mode (type "fuse.nydus-overlayfs-cocoon",
// overlay options plus io.katacontainers.volume=<base64 KataVirtualVolume>).
// Kata's runtimes read the volume and let the guest pull the image; when
// the host mounts the same mount (runc, or containerd copying image
// volumes), containerd runs mount.fuse, which runs this helper: it drops
// the Kata option and mounts plain overlay, as nydus-snapshotter's
// nydus-overlayfs does. Install it in containerd's PATH (e.g.
// /usr/local/bin). It also accepts containerd's own helper arguments
// (SOURCE TARGET -o opt ... -t TYPE), so it can stand in for mount.fuse
// where fuse is not installed.
//
// With COCOON_MOUNT_HELPER_LOG set to a file, each call appends a JSON line
// with its arguments, to see what containerd handed the runtime.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/containerd/containerd/v2/core/mount"

	"github.com/cocoon-cc/cocoon/snapshotter/katavolume"
)

// logEnv names the file each call is logged to (JSON lines).
const logEnv = "COCOON_MOUNT_HELPER_LOG"

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", os.Args[0], err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 1 && (args[0] == "-h" || args[0] == "--help") {
		fmt.Println("usage: nydus-overlayfs-cocoon SOURCE TARGET -o OPTIONS (as mount.fuse runs it)")
		return nil
	}
	req, err := katavolume.ParseHelperArgs(args)
	if err != nil {
		return err
	}
	if err := logCall(args, req); err != nil {
		return err
	}
	opts, err := req.OverlayOptions()
	if err != nil {
		return err
	}
	m := mount.Mount{Type: "overlay", Source: "overlay", Options: opts}
	if err := m.Mount(req.Target); err != nil {
		return fmt.Errorf("mount overlay on %s: %w", req.Target, err)
	}
	return nil
}

// logCall appends the call to $COCOON_MOUNT_HELPER_LOG when set.
func logCall(args []string, req katavolume.HelperRequest) error {
	path := os.Getenv(logEnv)
	if path == "" {
		return nil
	}
	line, err := json.Marshal(struct {
		Args    []string `json:"args"`
		Target  string   `json:"target"`
		Options []string `json:"options"`
	}{args, req.Target, req.Options})
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("%s: %w", logEnv, err)
	}
	defer f.Close()
	_, err = f.Write(append(line, '\n'))
	return err
}
