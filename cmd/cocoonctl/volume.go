package main

// cocoonctl volume: LUKS2 volumes through cryptvol. open and create start a
// detached engine process (cryptvol/detached) that holds the volume until
// close or destroy signals it.

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/cocoon-cc/cocoon/cryptvol"
	"github.com/cocoon-cc/cocoon/cryptvol/detached"
	"github.com/cocoon-cc/cocoon/cryptvol/luks2"
	"github.com/cocoon-cc/cocoon/internal/flagutil"
)

func init() {
	register(command{name: "volume format", summary: "write a LUKS2 header (aes-xts-plain64, 4K sectors) with a passphrase keyslot", run: runVolumeFormat})
	register(command{name: "volume open", summary: "unlock a LUKS2 volume and mount it (engine runs detached)", run: runVolumeOpen})
	register(command{name: "volume create", summary: "create and mount an ephemeral volume (random key, header in memory)", run: runVolumeCreate})
	register(command{name: "volume close", summary: "unmount a volume and stop its engine: volume close DIR", run: runVolumeClose})
	register(command{name: "volume destroy", summary: "close a volume and wipe its header (ephemeral: remove backing)", run: runVolumeDestroy})
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

type engineFlags struct{ engine, runtimeDir, stateDir *string }

func addEngineFlags(fs interface {
	String(name, value, usage string) *string
}) engineFlags {
	return engineFlags{
		engine:     fs.String("engine", cryptvol.EngineAuto, "crypto engine: auto, dmcrypt or userspace"),
		runtimeDir: fs.String("runtime-dir", "", "userspace engine's FUSE mounts (default /run/cocoon/cryptvol)"),
		stateDir:   fs.String("state-dir", detached.DefaultStateDir, "where volume state files live"),
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
	return startEngine(ctx, detached.Request{
		Op: detached.OpOpen, Header: *header, Device: *device, MountDir: *mount, Mkfs: *mkfs,
		Engine: *ef.engine, RuntimeDir: *ef.runtimeDir, StateDir: *ef.stateDir,
	}, pass)
}

func runVolumeCreate(ctx context.Context, args []string) error {
	fs := newFlags("volume create")
	backing := fs.String("backing", "", "file (created, sparse) or block device for the ciphertext")
	sizeFlag := fs.String("size", "", "`size` of the backing file, e.g. 1G ("+flagutil.SizeSyntax+")")
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
		if size, err = flagutil.ParseSize(*sizeFlag); err != nil {
			return fmt.Errorf("%v: %w", err, errUsage)
		}
	}
	return startEngine(ctx, detached.Request{
		Op: detached.OpCreate, Backing: *backing, Size: size, MountDir: *mount,
		Engine: *ef.engine, RuntimeDir: *ef.runtimeDir, StateDir: *ef.stateDir,
	}, nil)
}

// startEngine starts the detached engine process and reports where.
func startEngine(ctx context.Context, req detached.Request, secret []byte) error {
	s, err := detached.Start(ctx, req, secret)
	if err != nil {
		return err
	}
	fmt.Printf("mounted %s (engine process %d, log %s)\n", s.MountDir, s.PID, s.Log)
	return nil
}

func runVolumeClose(ctx context.Context, args []string) error {
	return stopVolume(ctx, "volume close", args, false)
}

func runVolumeDestroy(ctx context.Context, args []string) error {
	return stopVolume(ctx, "volume destroy", args, true)
}

func stopVolume(ctx context.Context, name string, args []string, destroy bool) error {
	fs := newFlags(name)
	stateDir := fs.String("state-dir", detached.DefaultStateDir, "where volume state files live")
	timeout := fs.Duration("timeout", 60*time.Second, "how long to wait for the engine process")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("want exactly one mount directory: %w", errUsage)
	}
	return detached.Stop(ctx, *stateDir, fs.Arg(0), destroy, *timeout)
}
