// Package loop attaches regular files to loop block devices through the
// loop-control and LOOP_CONFIGURE ioctls (no losetup binary needed).
//
// It never attaches a device it did not allocate itself and never detaches
// a loop device by guessing: callers pass the device they were given.
package loop

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// Options for Attach.
type Options struct {
	// BlockSize is the logical block size of the loop device (512..4096).
	BlockSize uint32
	// DirectIO asks the loop driver to bypass the page cache of the backing
	// file; if the backing file refuses, the device is attached buffered
	// and Device.DirectIO reports false.
	DirectIO bool
	ReadOnly bool
}

// Device is an attached loop device. Its file descriptor stays open until
// Detach so the kernel cannot hand the device to someone else.
type Device struct {
	path     string
	f        *os.File
	directIO bool
}

// Path is /dev/loopN.
func (d *Device) Path() string { return d.path }

// DirectIO reports whether the device runs with direct I/O.
func (d *Device) DirectIO() bool { return d.directIO }

// Attach binds backing to a free loop device.
func Attach(ctx context.Context, backing string, o Options) (*Device, error) {
	flags := os.O_RDWR
	if o.ReadOnly {
		flags = os.O_RDONLY
	}
	bf, err := os.OpenFile(backing, flags|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening loop backing file: %w", err)
	}
	defer bf.Close()
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening /dev/loop-control: %w", err)
	}
	defer ctl.Close()
	for attempt := 0; attempt < 16; attempt++ {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return nil, fmt.Errorf("LOOP_CTL_GET_FREE: %w", err)
		}
		path := fmt.Sprintf("/dev/loop%d", n)
		lf, err := os.OpenFile(path, flags|unix.O_CLOEXEC, 0)
		if errors.Is(err, os.ErrNotExist) {
			// No udev: create the node ourselves (block major 7).
			if err := unix.Mknod(path, unix.S_IFBLK|0o660, int(unix.Mkdev(7, uint32(n)))); err != nil && !errors.Is(err, os.ErrExist) {
				return nil, fmt.Errorf("creating %s: %w", path, err)
			}
			lf, err = os.OpenFile(path, flags|unix.O_CLOEXEC, 0)
		}
		if err != nil {
			return nil, fmt.Errorf("opening %s: %w", path, err)
		}
		cfg := unix.LoopConfig{Fd: uint32(bf.Fd()), Size: o.BlockSize}
		cfg.Info.Flags = unix.LO_FLAGS_AUTOCLEAR
		if o.ReadOnly {
			cfg.Info.Flags |= unix.LO_FLAGS_READ_ONLY
		}
		copy(cfg.Info.File_name[:], backing)
		dio := false
		if o.DirectIO {
			c := cfg
			c.Info.Flags |= unix.LO_FLAGS_DIRECT_IO
			err = unix.IoctlLoopConfigure(int(lf.Fd()), &c)
			dio = err == nil
			if errors.Is(err, unix.EINVAL) {
				log.G(ctx).WithField("backing", backing).Debug("loop: direct I/O refused, attaching buffered")
				err = unix.IoctlLoopConfigure(int(lf.Fd()), &cfg)
			}
		} else {
			err = unix.IoctlLoopConfigure(int(lf.Fd()), &cfg)
		}
		if errors.Is(err, unix.EBUSY) {
			lf.Close() // raced with another attacher; take the next free one
			continue
		}
		if err != nil {
			lf.Close()
			return nil, fmt.Errorf("LOOP_CONFIGURE %s on %s: %w", path, backing, err)
		}
		log.G(ctx).WithFields(log.Fields{"device": path, "backing": backing, "direct_io": dio}).Debug("loop device attached")
		return &Device{path: path, f: lf, directIO: dio}, nil
	}
	return nil, errors.New("no free loop device after 16 attempts")
}

// Detach releases the loop device and waits (up to timeout) until the
// kernel has dropped its reference to the backing file.
func (d *Device) Detach(ctx context.Context, timeout time.Duration) error {
	if d.f == nil {
		return nil
	}
	err := unix.IoctlSetInt(int(d.f.Fd()), unix.LOOP_CLR_FD, 0)
	if err != nil && !errors.Is(err, unix.ENXIO) {
		// With our fd still open the kernel defers the detach to the last
		// close (autoclear); any other error is real.
		d.f.Close()
		d.f = nil
		return fmt.Errorf("LOOP_CLR_FD %s: %w", d.path, err)
	}
	d.f.Close()
	d.f = nil
	return WaitDetached(ctx, d.path, timeout)
}

// WaitDetached polls sysfs until the loop device has no backing file.
func WaitDetached(ctx context.Context, path string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if _, ok := BackingFile(path); !ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("loop device %s still attached after %v", path, timeout)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s to detach: %w", path, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// BackingFile returns the backing file of an attached loop device.
func BackingFile(path string) (string, bool) {
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(path), "loop/backing_file"))
	if err != nil {
		return "", false
	}
	return strings.TrimSpace(string(b)), true
}

// DetachPath detaches a loop device by path; used to clean up after a
// crashed engine process whose state names the device.
func DetachPath(ctx context.Context, path string, timeout time.Duration) error {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening %s: %w", path, err)
	}
	d := &Device{path: path, f: f}
	return d.Detach(ctx, timeout)
}
