// Package dmcrypt is cryptvol's kernel engine: it maps a LUKS2 data segment
// with a device-mapper "crypt" target through the device-mapper ioctls
// (DM_DEV_CREATE, DM_TABLE_LOAD, DM_DEV_SUSPEND to resume, DM_DEV_REMOVE),
// without libdevmapper, udev or the dmsetup binary.
//
// The volume key is passed to the kernel once, in the table parameters,
// with DM_SECURE_DATA_FLAG so the kernel wipes its ioctl buffers; our copy
// of the parameters is zeroed right after the ioctl. The package must never
// log a table line, since it contains the key.
//
// Not exercised on the project's machines (their kernels have no
// device-mapper): only the ioctl encoding and the table line are tested.
package dmcrypt

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
	"unsafe"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/cocoon-cc/cocoon/cryptvol/engine"
	"github.com/cocoon-cc/cocoon/cryptvol/loop"
)

// Name of this engine.
const Name = "dmcrypt"

// ControlPath is the device-mapper control node.
const ControlPath = "/dev/mapper/control"

// Available reports whether the kernel offers device-mapper: the control
// node exists and answers DM_VERSION. (A node alone is not enough: package
// scripts create /dev/mapper/control even on kernels without
// device-mapper, where opening it fails with ENODEV.)
func Available() bool { return Probe() == nil }

// Probe explains why device-mapper is unusable, or returns nil.
func Probe() error {
	ctl, err := os.OpenFile(ControlPath, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening %s: %w", ControlPath, err)
	}
	defer ctl.Close()
	b, err := encode("", "", 0, nil)
	if err != nil {
		return err
	}
	if err := ioctl(ctl, cmdVersion, b); err != nil {
		return fmt.Errorf("DM_VERSION: %w", err)
	}
	return nil
}

// Layout of struct dm_ioctl and struct dm_target_spec (linux/dm-ioctl.h).
const (
	ioctlHeaderSize = 312
	targetSpecSize  = 40
	nameLen         = 128
	uuidLen         = 129
	targetTypeLen   = 16
	// bufferSize leaves room for the kernel's replies, like libdevmapper.
	bufferSize = 16 * 1024

	offVersion     = 0
	offDataSize    = 12
	offDataStart   = 16
	offTargetCount = 20
	offFlags       = 28
	offDev         = 40
	offName        = 48
	offUUID        = 176
)

// Interface version we speak (4.x is every kernel since 2.6).
var dmVersion = [3]uint32{4, 0, 0}

// Commands (DM_*_CMD) and flags.
const (
	cmdVersion    = 0
	cmdDevCreate  = 3
	cmdDevRemove  = 4
	cmdDevSuspend = 6
	cmdTableLoad  = 9

	flagSuspend    = 1 << 1
	flagSecureData = 1 << 15
)

// ioctlNumber is _IOWR(0xfd, cmd, struct dm_ioctl).
func ioctlNumber(cmd uint32) uint32 {
	const iocReadWrite = 3
	return iocReadWrite<<30 | ioctlHeaderSize<<16 | 0xfd<<8 | cmd
}

// target is one line of a table.
type target struct {
	start, length uint64 // 512-byte sectors
	typ           string
	params        []byte
}

// encode builds a dm_ioctl buffer with its targets.
func encode(name, uuid string, flags uint32, targets []target) ([]byte, error) {
	if len(name) >= nameLen || len(uuid) >= uuidLen {
		return nil, fmt.Errorf("device-mapper name %q or uuid too long", name)
	}
	size := ioctlHeaderSize
	for _, t := range targets {
		size += targetSpecSize + align8(len(t.params)+1)
	}
	b := make([]byte, max(size, bufferSize))
	le := binary.NativeEndian
	for i, v := range dmVersion {
		le.PutUint32(b[offVersion+4*i:], v)
	}
	le.PutUint32(b[offDataSize:], uint32(len(b)))
	le.PutUint32(b[offDataStart:], ioctlHeaderSize)
	le.PutUint32(b[offTargetCount:], uint32(len(targets)))
	le.PutUint32(b[offFlags:], flags)
	copy(b[offName:offName+nameLen-1], name)
	copy(b[offUUID:offUUID+uuidLen-1], uuid)
	off := ioctlHeaderSize
	for _, t := range targets {
		if len(t.typ) >= targetTypeLen {
			return nil, fmt.Errorf("target type %q too long", t.typ)
		}
		spec := b[off:]
		le.PutUint64(spec[0:], t.start)
		le.PutUint64(spec[8:], t.length)
		n := targetSpecSize + align8(len(t.params)+1)
		le.PutUint32(spec[20:], uint32(n)) // next: offset of the following spec
		copy(spec[24:24+targetTypeLen], t.typ)
		copy(spec[targetSpecSize:], t.params)
		off += n
	}
	return b, nil
}

func align8(n int) int { return (n + 7) &^ 7 }

// cryptParams is the crypt target's parameter line:
// <cipher> <key hex> <iv_offset> <device> <offset> [<#opt> <opt>...].
// The caller zeroizes the result: it contains the key.
func cryptParams(t engine.Target, dev string) []byte {
	var buf bytes.Buffer
	buf.Grow(256)
	buf.WriteString(t.Cipher)
	buf.WriteByte(' ')
	hexKey := make([]byte, hex.EncodedLen(len(t.Key)))
	hex.Encode(hexKey, t.Key)
	buf.Write(hexKey)
	clear(hexKey)
	fmt.Fprintf(&buf, " %d %s %d", t.IVTweak, dev, t.Offset/512)
	if t.SectorSize != 512 {
		// No iv_large_sectors: LUKS2 counts IVs in 512-byte units.
		fmt.Fprintf(&buf, " 1 sector_size:%d", t.SectorSize)
	}
	out := bytes.Clone(buf.Bytes())
	clear(buf.Bytes()[:buf.Len()])
	return out
}

// Engine is the dm-crypt engine.
type Engine struct{}

// New returns the engine.
func New() *Engine { return &Engine{} }

// Name implements engine.Engine.
func (*Engine) Name() string { return Name }

func ioctl(ctl *os.File, cmd uint32, buf []byte) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, ctl.Fd(), uintptr(ioctlNumber(cmd)), uintptr(unsafe.Pointer(&buf[0])))
	if errno != 0 {
		return errno
	}
	return nil
}

// Attach implements engine.Engine.
func (e *Engine) Attach(ctx context.Context, t engine.Target) (_ engine.Device, retErr error) {
	if err := t.Validate(); err != nil {
		return nil, fmt.Errorf("dm-crypt engine: %w", err)
	}
	ctl, err := os.OpenFile(ControlPath, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening %s (no device-mapper?): %w", ControlPath, err)
	}
	defer ctl.Close()
	if len(t.Name) >= nameLen {
		return nil, fmt.Errorf("device-mapper name %q too long", t.Name)
	}
	d := &device{name: t.Name}
	defer func() {
		if retErr != nil {
			if err := d.Detach(context.WithoutCancel(ctx)); err != nil {
				log.G(ctx).WithError(err).Warn("cryptvol: detach after a failed attach")
			}
		}
	}()
	dev := t.Backing
	if st, err := os.Stat(t.Backing); err != nil {
		return nil, fmt.Errorf("backing %s: %w", t.Backing, err)
	} else if st.Mode().IsRegular() {
		// dm-crypt needs a block device: put a loop device under a file.
		d.loop, err = loop.Attach(ctx, t.Backing, loop.Options{BlockSize: 512, DirectIO: true})
		if err != nil {
			return nil, err
		}
		dev = d.loop.Path()
	}
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		return nil, fmt.Errorf("stat %s: %w", dev, err)
	}
	majmin := fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))

	create, err := encode(t.Name, "CRYPT-COCOON-"+t.Name, 0, nil)
	if err != nil {
		return nil, err
	}
	if err := ioctl(ctl, cmdDevCreate, create); err != nil {
		return nil, fmt.Errorf("DM_DEV_CREATE %s: %w", t.Name, err)
	}
	d.created = true
	devnum := binary.NativeEndian.Uint64(create[offDev:])

	params := cryptParams(t, majmin)
	load, err := encode(t.Name, "", flagSecureData, []target{{0, uint64(t.Size / 512), "crypt", params}})
	clear(params)
	if err != nil {
		return nil, err
	}
	err = ioctl(ctl, cmdTableLoad, load)
	clear(load)
	if err != nil {
		return nil, fmt.Errorf("DM_TABLE_LOAD crypt target for %s: %w", t.Name, err)
	}
	resume, _ := encode(t.Name, "", flagSecureData, nil)
	if err := ioctl(ctl, cmdDevSuspend, resume); err != nil {
		return nil, fmt.Errorf("DM_DEV_SUSPEND (resume) %s: %w", t.Name, err)
	}
	d.path = filepath.Join("/dev/mapper", t.Name)
	// No udev in a guest: make the node ourselves.
	if err := unix.Mknod(d.path, unix.S_IFBLK|0o600, int(devnum)); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("creating %s: %w", d.path, err)
	}
	d.node = true
	log.G(ctx).WithFields(log.Fields{"engine": Name, "name": t.Name, "device": d.path, "backing": t.Backing}).Info("cryptvol: dm-crypt engine attached")
	return d, nil
}

type device struct {
	name    string
	path    string
	created bool
	node    bool
	loop    *loop.Device
}

func (d *device) Path() string { return d.path }

// Detach removes the mapping (retrying while udev-less openers linger),
// its node and the loop device under it.
func (d *device) Detach(ctx context.Context) error {
	var errs []error
	if d.node {
		if err := os.Remove(d.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("removing %s: %w", d.path, err))
		}
		d.node = false
	}
	if d.created {
		ctl, err := os.OpenFile(ControlPath, os.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			errs = append(errs, fmt.Errorf("opening %s: %w", ControlPath, err))
		} else {
			b, _ := encode(d.name, "", flagSecureData, nil)
			for i := 0; ; i++ {
				err = ioctl(ctl, cmdDevRemove, b)
				if !errors.Is(err, unix.EBUSY) || i == 50 {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			ctl.Close()
			if err != nil {
				errs = append(errs, fmt.Errorf("DM_DEV_REMOVE %s: %w", d.name, err))
			} else {
				d.created = false
			}
		}
	}
	if d.loop != nil {
		if err := d.loop.Detach(ctx, 10*time.Second); err != nil {
			errs = append(errs, err)
		}
		d.loop = nil
	}
	return errors.Join(errs...)
}

var _ engine.Engine = (*Engine)(nil)
