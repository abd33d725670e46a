package cryptvol

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"time"
	"unsafe"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/cocoon-cc/cocoon/cryptvol/engine"
	"github.com/cocoon-cc/cocoon/cryptvol/engine/dmcrypt"
	"github.com/cocoon-cc/cocoon/cryptvol/engine/userspace"
	"github.com/cocoon-cc/cocoon/cryptvol/luks2"
)

// Engine names accepted in options.
const (
	EngineAuto      = "auto" // dm-crypt when /dev/mapper/control answers, else userspace
	EngineDMCrypt   = dmcrypt.Name
	EngineUserspace = userspace.Name
)

// Errors callers test with errors.Is.
var (
	ErrWrongPassphrase = luks2.ErrWrongPassphrase
	ErrInvalidHeader   = luks2.ErrInvalidHeader
	ErrUnsupported     = luks2.ErrUnsupported
	ErrNoEngine        = errors.New("requested crypto engine is not available")
)

// volumeKeySize is the aes-xts-plain64 key size we generate (AES-256-XTS).
const volumeKeySize = 64

// SelectEngine returns the engine named (EngineAuto or "" to detect) and
// logs the choice. runtimeDir is where the userspace engine keeps its FUSE
// mounts ("" for the default).
func SelectEngine(ctx context.Context, name, runtimeDir string) (engine.Engine, error) {
	var e engine.Engine
	reason := "forced"
	switch name {
	case "", EngineAuto:
		if err := dmcrypt.Probe(); err == nil {
			e, reason = dmcrypt.New(), "device-mapper answers on "+dmcrypt.ControlPath
		} else {
			e, reason = userspace.New(userspace.Options{RuntimeDir: runtimeDir}), "no device-mapper: "+err.Error()
		}
	case EngineDMCrypt:
		if err := dmcrypt.Probe(); err != nil {
			return nil, fmt.Errorf("%w: dm-crypt: %v", ErrNoEngine, err)
		}
		e = dmcrypt.New()
	case EngineUserspace:
		e = userspace.New(userspace.Options{RuntimeDir: runtimeDir})
	default:
		return nil, fmt.Errorf("%w: unknown engine %q (want auto, dmcrypt or userspace)", ErrNoEngine, name)
	}
	log.G(ctx).WithFields(log.Fields{"engine": e.Name(), "reason": reason}).Info("cryptvol: crypto engine selected")
	return e, nil
}

// FormatOptions describes a new persistent LUKS2 volume.
type FormatOptions struct {
	// Header is the detached header file to create; empty puts the header
	// in place at the start of Device (data then starts at 16 MiB).
	Header string
	// Device is the block device or (sparse) file that will hold the data.
	Device     string
	Passphrase []byte
	// KDF for the passphrase keyslot; zero means PBKDF2-SHA256 with
	// luks2.DefaultPBKDF2Iterations.
	KDF        luks2.KDFParams
	Label      string
	SectorSize int // default 4096
}

// Format writes a LUKS2 header for a fresh random volume key (aes-xts-plain64,
// 4096-byte sectors) with one passphrase keyslot. Like cryptsetup it does
// not touch the data area. The volume key is zeroized before returning.
func Format(ctx context.Context, o FormatOptions) error {
	if o.Device == "" || len(o.Passphrase) == 0 {
		return errors.New("format needs a device and a passphrase")
	}
	key, err := newVolumeKey()
	if err != nil {
		return err
	}
	defer luks2.Zero(key)
	co := luks2.CreateOptions{SectorSize: o.SectorSize, Label: o.Label}
	if o.Header == "" {
		co.SegmentOffset = 2*luks2.DefaultHeaderSize + luks2.DefaultKeyslotsSize
	}
	im, err := luks2.Create(key, co)
	if err != nil {
		return fmt.Errorf("building LUKS2 header: %w", err)
	}
	defer im.Wipe()
	if _, err := im.AddKeyslot(key, o.Passphrase, o.KDF); err != nil {
		return fmt.Errorf("adding passphrase keyslot: %w", err)
	}
	size, err := deviceSize(o.Device)
	if err != nil {
		return err
	}
	if size < int64(co.SegmentOffset)+int64(max(o.SectorSize, luks2.DefaultSectorSize)) {
		return fmt.Errorf("device %s (%d bytes) too small for a %d-byte header plus data", o.Device, size, co.SegmentOffset)
	}
	img, err := im.Encode()
	if err != nil {
		return err
	}
	target, flags := o.Device, os.O_WRONLY
	if o.Header != "" {
		target, flags = o.Header, os.O_WRONLY|os.O_CREATE|os.O_TRUNC
	}
	if err := writeFileAt(target, flags, img); err != nil {
		return fmt.Errorf("writing LUKS2 header: %w", err)
	}
	log.G(ctx).WithFields(log.Fields{"device": o.Device, "header": target, "uuid": im.Header.UUID}).Info("cryptvol: LUKS2 volume formatted")
	return nil
}

func writeFileAt(path string, flags int, b []byte) error {
	f, err := os.OpenFile(path, flags|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.WriteAt(b, 0); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func newVolumeKey() ([]byte, error) {
	key := make([]byte, volumeKeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("generating volume key: %w", err)
	}
	return key, nil
}

// deviceSize returns the size of a regular file or block device.
func deviceSize(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("opening %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("stat %s: %w", path, err)
	}
	if st.Mode().IsRegular() {
		return st.Size(), nil
	}
	if st.Mode()&os.ModeDevice == 0 {
		return 0, fmt.Errorf("%s is neither a regular file nor a block device", path)
	}
	var n uint64
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&n))); errno != 0 {
		return 0, fmt.Errorf("BLKGETSIZE64 %s: %w", path, errno)
	}
	return int64(n), nil
}

// OpenOptions describes opening an existing LUKS2 volume.
type OpenOptions struct {
	Header     string // detached header; empty reads the header from Device
	Device     string
	Passphrase []byte // not retained; the caller zeroizes it
	MountDir   string
	// Mkfs creates an ext4 file system when the decrypted device holds
	// none (a freshly formatted volume); an existing one is kept.
	Mkfs       bool
	Engine     string // EngineAuto (default), EngineDMCrypt, EngineUserspace
	RuntimeDir string // userspace engine's FUSE mounts; "" for the default
	// Name names the mapping (the dm-crypt device /dev/mapper/Name, the
	// userspace engine's FUSE source "cocoon-cryptvol:Name"); it must be
	// unique on the host. "" derives one from MountDir (or Device).
	Name string
	// DeviceOnly maps the volume without creating or mounting a file
	// system: MountDir and Mkfs must be unset, Volume.BlockDevice is the
	// decrypted block device and Close does not unmount anything (the
	// caller unmounts what it mounted on that device first).
	DeviceOnly bool
}

// Open unlocks a LUKS2 volume, maps it with the chosen engine and mounts
// its ext4 file system at MountDir. On any error nothing stays mounted or
// attached. Cancelling ctx stops a key derivation in progress (see
// luks2.Image.UnlockContext); Open then returns ctx's error.
func Open(ctx context.Context, o OpenOptions) (*Volume, error) {
	if err := checkTarget(o.Device, o.MountDir, o.DeviceOnly, o.Mkfs); err != nil {
		return nil, fmt.Errorf("open: %w", err)
	}
	hdrPath := o.Header
	if hdrPath == "" {
		hdrPath = o.Device
	}
	im, err := readImage(hdrPath)
	if err != nil {
		return nil, err
	}
	defer im.Wipe()
	key, slot, err := im.UnlockContext(ctx, o.Passphrase)
	if err != nil {
		return nil, fmt.Errorf("unlocking %s: %w", hdrPath, err)
	}
	defer luks2.Zero(key)
	log.G(ctx).WithFields(log.Fields{"header": hdrPath, "keyslot": slot}).Debug("cryptvol: keyslot opened")
	v := &Volume{
		mountDir: o.MountDir, device: o.Device, header: o.Header,
		metaSize: int64(im.Header.MetadataSize()), name: o.Name, deviceOnly: o.DeviceOnly,
	}
	if err := v.attach(ctx, o.Engine, o.RuntimeDir, im.Header, key); err != nil {
		return nil, err
	}
	if v.deviceOnly {
		return v, nil
	}
	if err := v.mount(ctx, o.Mkfs, false); err != nil {
		return nil, errors.Join(err, v.detach(ctx))
	}
	return v, nil
}

// checkTarget validates where a volume goes: a mount directory, or none
// for a device-only volume.
func checkTarget(device, mountDir string, deviceOnly, mkfs bool) error {
	switch {
	case device == "":
		return errors.New("no device given")
	case deviceOnly && (mountDir != "" || mkfs):
		return errors.New("a device-only volume takes no mount directory and no mkfs")
	case !deviceOnly && mountDir == "":
		return errors.New("no mount directory given")
	}
	return nil
}

func readImage(path string) (*luks2.Image, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening LUKS2 header %s: %w", path, err)
	}
	defer f.Close()
	im, err := luks2.ReadImage(f)
	if err != nil {
		return nil, fmt.Errorf("reading LUKS2 header %s: %w", path, err)
	}
	return im, nil
}

// EphemeralOptions describes a scratch volume whose key and header exist
// only in this process's memory.
type EphemeralOptions struct {
	// Backing is the file (created or truncated) or block device that
	// receives the ciphertext.
	Backing string
	// Size of the backing file in bytes; 0 uses the size of an existing
	// block device.
	Size       int64
	MountDir   string
	Engine     string
	RuntimeDir string
	// Name and DeviceOnly as in OpenOptions: with DeviceOnly the volume
	// is mapped but no file system is created or mounted.
	Name       string
	DeviceOnly bool
}

// CreateEphemeral creates a volume with a random key and an in-memory LUKS2
// header (no keyslot: nothing can ever reopen it), formats it ext4 and
// mounts it (unless DeviceOnly). Close or Destroy makes the data
// unrecoverable.
func CreateEphemeral(ctx context.Context, o EphemeralOptions) (*Volume, error) {
	if err := checkTarget(o.Backing, o.MountDir, o.DeviceOnly, false); err != nil {
		return nil, fmt.Errorf("ephemeral volume: %w", err)
	}
	createdBacking := false
	if o.Size > 0 {
		f, err := os.OpenFile(o.Backing, os.O_RDWR|os.O_CREATE|os.O_TRUNC|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return nil, fmt.Errorf("creating backing file: %w", err)
		}
		err = f.Truncate(o.Size / luks2.DefaultSectorSize * luks2.DefaultSectorSize)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("sizing backing file: %w", err)
		}
		createdBacking = true
	}
	key, err := newVolumeKey()
	if err != nil {
		return nil, err
	}
	defer luks2.Zero(key)
	im, err := luks2.Create(key, luks2.CreateOptions{KeyslotsSize: 4096})
	if err != nil {
		return nil, fmt.Errorf("building in-memory LUKS2 header: %w", err)
	}
	v := &Volume{mountDir: o.MountDir, device: o.Backing, ephemeral: true, image: im, name: o.Name, deviceOnly: o.DeviceOnly}
	if createdBacking {
		v.removeBacking = o.Backing
	}
	fail := func(err error) (*Volume, error) {
		im.Wipe()
		if createdBacking {
			os.Remove(o.Backing)
		}
		return nil, err
	}
	if err := v.attach(ctx, o.Engine, o.RuntimeDir, im.Header, key); err != nil {
		return fail(err)
	}
	if v.deviceOnly {
		return v, nil
	}
	if err := v.mount(ctx, true, true); err != nil {
		return fail(errors.Join(err, v.detach(ctx)))
	}
	return v, nil
}

// Volume is an open, mounted volume (or a tmpfs emptyDir).
type Volume struct {
	mountDir      string
	device        string // data device or backing file
	header        string // detached header path ("" in place or in memory)
	metaSize      int64  // LUKS2 metadata bytes at the start of the header device
	ephemeral     bool
	image         *luks2.Image // ephemeral volumes: the in-memory header
	removeBacking string       // backing file we created and delete on Destroy
	removeDir     bool         // emptyDir: remove MountDir on Destroy
	tmpfs         bool
	engineName    string
	dev           engine.Device
	name          string // mapping name; "" derives one (targetName)
	deviceOnly    bool   // mapped only: nothing of ours is mounted

	mu     sync.Mutex
	closed bool
}

// Info is what a supervisor needs to find a volume's pieces again (no keys).
type Info struct {
	MountDir    string `json:"mount_dir"`
	Engine      string `json:"engine,omitempty"`
	BlockDevice string `json:"block_device,omitempty"`
	// EngineMount is the userspace engine's private FUSE mount.
	EngineMount string `json:"engine_mount,omitempty"`
	Device      string `json:"device,omitempty"`
	Header      string `json:"header,omitempty"`
	Ephemeral   bool   `json:"ephemeral"`
	Tmpfs       bool   `json:"tmpfs,omitempty"`
	// CreatedBacking is the backing file this package created (and
	// Destroy removes); empty when the caller supplied the backing.
	CreatedBacking string `json:"created_backing,omitempty"`
}

// Info describes the volume.
func (v *Volume) Info() Info {
	i := Info{MountDir: v.mountDir, Engine: v.engineName, Device: v.device, Header: v.header, Ephemeral: v.ephemeral, Tmpfs: v.tmpfs, CreatedBacking: v.removeBacking}
	if v.dev != nil {
		i.BlockDevice = v.dev.Path()
		if m, ok := v.dev.(interface{ EngineMount() string }); ok {
			i.EngineMount = m.EngineMount()
		}
	}
	return i
}

// MountDir is where the file system is mounted ("" for a device-only
// volume).
func (v *Volume) MountDir() string { return v.mountDir }

// BlockDevice is the decrypted block device (/dev/mapper/NAME for
// dm-crypt, /dev/loopN for the userspace engine); "" for tmpfs and once
// closed.
func (v *Volume) BlockDevice() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.dev == nil {
		return ""
	}
	return v.dev.Path()
}

// Engine is the engine serving the volume ("" for tmpfs).
func (v *Volume) Engine() string { return v.engineName }

func targetName(mountDir string) string {
	abs, err := filepath.Abs(mountDir)
	if err != nil {
		abs = mountDir
	}
	sum := sha256.Sum256([]byte(abs))
	return "cocoon-" + hex.EncodeToString(sum[:6])
}

func (v *Volume) attach(ctx context.Context, engineName, runtimeDir string, h *luks2.Header, key []byte) error {
	_, seg, err := h.DataSegment()
	if err != nil {
		return err
	}
	size, err := deviceSize(v.device)
	if err != nil {
		return err
	}
	dataSize := size - int64(seg.Offset)
	if seg.Size != "dynamic" {
		n, _ := strconv.ParseInt(seg.Size, 10, 64)
		dataSize = min(dataSize, n)
	}
	dataSize = dataSize / int64(seg.SectorSize) * int64(seg.SectorSize)
	if dataSize <= 0 {
		return fmt.Errorf("device %s (%d bytes) has no room for data after offset %d", v.device, size, seg.Offset)
	}
	eng, err := SelectEngine(ctx, engineName, runtimeDir)
	if err != nil {
		return err
	}
	name := v.name
	if name == "" {
		name = targetName(cmp.Or(v.mountDir, v.device))
	}
	v.dev, err = eng.Attach(ctx, engine.Target{
		Name: name, Backing: v.device, Offset: int64(seg.Offset), Size: dataSize,
		Cipher: seg.Encryption, Key: key, SectorSize: seg.SectorSize, IVTweak: uint64(seg.IVTweak),
	})
	if err != nil {
		return fmt.Errorf("attaching %s engine: %w", eng.Name(), err)
	}
	v.engineName = eng.Name()
	return nil
}

func (v *Volume) detach(ctx context.Context) error {
	if v.dev == nil {
		return nil
	}
	err := v.dev.Detach(ctx)
	v.dev = nil
	if err != nil {
		return fmt.Errorf("detaching %s engine: %w", v.engineName, err)
	}
	return nil
}

// ext4 superblock: 1024 bytes in, magic 0xEF53 at byte 56.
func hasExt4(dev string) (bool, error) {
	f, err := os.Open(dev)
	if err != nil {
		return false, fmt.Errorf("opening %s: %w", dev, err)
	}
	defer f.Close()
	sb := make([]byte, 1024)
	if _, err := f.ReadAt(sb, 1024); err != nil && !errors.Is(err, io.EOF) {
		return false, fmt.Errorf("reading superblock of %s: %w", dev, err)
	}
	return binary.LittleEndian.Uint16(sb[56:]) == 0xEF53, nil
}

func mkfsExt4(ctx context.Context, dev string) error {
	cmd := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-b", "4096", "-m", "0",
		"-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1", dev)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("mkfs.ext4 %s: %w: %s", dev, err, out)
	}
	return nil
}

func (v *Volume) mount(ctx context.Context, mkfs, always bool) error {
	dev := v.dev.Path()
	if mkfs {
		has := false
		if !always {
			var err error
			if has, err = hasExt4(dev); err != nil {
				return err
			}
		}
		if !has {
			if err := mkfsExt4(ctx, dev); err != nil {
				return err
			}
		}
	}
	if err := os.MkdirAll(v.mountDir, 0o755); err != nil {
		return fmt.Errorf("creating mount point: %w", err)
	}
	if err := unix.Mount(dev, v.mountDir, "ext4", unix.MS_NODEV|unix.MS_NOSUID, ""); err != nil {
		return fmt.Errorf("mounting ext4 from %s at %s: %w", dev, v.mountDir, err)
	}
	log.G(ctx).WithFields(log.Fields{"mount": v.mountDir, "device": dev, "engine": v.engineName, "ephemeral": v.ephemeral}).Info("cryptvol: volume mounted")
	return nil
}

func unmount(ctx context.Context, dir string) error {
	var err error
	for i := 0; i < 50; i++ {
		err = unix.Unmount(dir, 0)
		if err == nil || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return nil // EINVAL: not a mount point (already unmounted)
		}
		if !errors.Is(err, unix.EBUSY) {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("unmounting %s: %w", dir, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("unmounting %s: %w", dir, err)
}

// syncDevice writes the block device's dirty page cache through the
// mapping.
func syncDevice(dev engine.Device) error {
	if dev == nil {
		return nil
	}
	f, err := os.OpenFile(dev.Path(), os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening %s to flush it: %w", dev.Path(), err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("flushing %s: %w", dev.Path(), err)
	}
	return nil
}

// Close unmounts the file system, removes the mapping and zeroizes what
// the process held. For an ephemeral volume this throws the key away: its
// data can never be read again. Close is idempotent.
func (v *Volume) Close(ctx context.Context) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return nil
	}
	if v.deviceOnly {
		// Nothing of ours is mounted, but what the caller wrote through
		// the block device may sit in its page cache, which removing the
		// mapping would drop.
		if err := syncDevice(v.dev); err != nil {
			return err
		}
	} else if err := unmount(ctx, v.mountDir); err != nil {
		return err // still mounted: keep the mapping so nothing is lost
	}
	if err := v.detach(ctx); err != nil {
		return err
	}
	if v.image != nil {
		v.image.Wipe()
		v.image = nil
	}
	v.closed = true
	log.G(ctx).WithField("mount", v.mountDir).Info("cryptvol: volume closed")
	return nil
}

// Destroy closes the volume and wipes its header: the in-memory header of
// an ephemeral volume (and the backing file it created), or the LUKS2
// metadata of a persistent volume (a detached header file is overwritten
// with random bytes and removed; an in-place header is overwritten). An
// emptyDir's directory is removed.
func (v *Volume) Destroy(ctx context.Context) error {
	if err := v.Close(ctx); err != nil {
		return err
	}
	var errs []error
	if !v.ephemeral && !v.tmpfs {
		if v.header != "" {
			errs = append(errs, WipeHeader(v.header, v.metaSize, true))
		} else {
			errs = append(errs, WipeHeader(v.device, v.metaSize, false))
		}
	}
	if v.removeBacking != "" {
		if err := os.Remove(v.removeBacking); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("removing backing file: %w", err))
		}
	}
	if v.removeDir {
		if err := os.RemoveAll(v.mountDir); err != nil {
			errs = append(errs, fmt.Errorf("removing emptyDir: %w", err))
		}
	}
	return errors.Join(errs...)
}

// WipeHeader overwrites the first size bytes of path (the LUKS2 metadata:
// both header copies and every keyslot) with random bytes and syncs; with
// remove it then deletes the file. size 0 reads the header to learn it.
func WipeHeader(path string, size int64, remove bool) error {
	if size == 0 {
		im, err := readImage(path)
		if err != nil {
			return err
		}
		size = int64(im.Header.MetadataSize())
		im.Wipe()
	}
	f, err := os.OpenFile(path, os.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening %s to wipe its header: %w", path, err)
	}
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(buf)) {
		n := min(int64(len(buf)), size-off)
		if _, err := rand.Read(buf[:n]); err != nil {
			f.Close()
			return fmt.Errorf("wiping header: %w", err)
		}
		if _, err := f.WriteAt(buf[:n], off); err != nil {
			f.Close()
			return fmt.Errorf("wiping header of %s: %w", path, err)
		}
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("syncing wiped header of %s: %w", path, err)
	}
	f.Close()
	if remove {
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("removing wiped header: %w", err)
		}
	}
	return nil
}
