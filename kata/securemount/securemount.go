package securemount

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/containerd/log"
	"github.com/google/uuid"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/cocoon-cc/cocoon/cryptvol"
	"github.com/cocoon-cc/cocoon/cryptvol/luks2"
)

// Volume types upstream's CDH knows (storage/volume_type Volume).
const (
	VolumeBlockDevice = "block-device"
	volumeAliyunOSS   = "alibaba-cloud-oss"
)

// Options configures a Mounter. The key sources are optional: a request
// whose key needs a missing one fails with ErrKey.
type Options struct {
	// Unsealer resolves "sealed.…" keys.
	Unsealer Unsealer
	// Resources fetches "kbs:///…" keys.
	Resources ResourceGetter
	// Engine is cryptvol's engine choice: cryptvol.EngineAuto ("": dm-crypt
	// where the kernel has device-mapper, else userspace),
	// cryptvol.EngineDMCrypt or cryptvol.EngineUserspace.
	Engine string
	// RuntimeDir holds the userspace engine's FUSE mounts ("": cryptvol's
	// default).
	RuntimeDir string
	// KDF of the keyslot written when an empty device is formatted with a
	// key; zero is cryptvol's default (PBKDF2-SHA256, 600000 iterations).
	KDF luks2.KDFParams
	// SysfsDir is where /sys is mounted ("" for /sys); deviceId is
	// resolved through SysfsDir/dev/block/MAJ:MIN/uevent.
	SysfsDir string
}

// Mounter serves SecureMount requests and keeps what it mounted until
// Unmount or Close. Its volumes live as long as its process: the
// userspace engine's FUSE server runs in it. It is safe for concurrent
// use.
type Mounter struct {
	opts  Options
	sysfs string

	mu      sync.Mutex
	byPoint map[string]*mount // by cleaned mount point; nil value: being set up
	devices map[string]string // sourceDevice.id -> mount point
	names   map[string]string // mapper name -> mount point
}

// mount is one volume SecureMount set up.
type mount struct {
	point     string // cleaned mount point
	target    string // TargetDevice or TargetFS
	vol       *cryptvol.Volume
	deviceID  string
	name      string
	claim     *os.File // exclusive open of the source under the userspace engine
	ephemeral bool
	closing   bool // Unmount in progress (under Mounter.mu)
}

// New returns a Mounter.
func New(o Options) *Mounter {
	sysfs := o.SysfsDir
	if sysfs == "" {
		sysfs = "/sys"
	}
	return &Mounter{opts: o, sysfs: sysfs, byPoint: map[string]*mount{}, devices: map[string]string{}, names: map[string]string{}}
}

// SecureMount is CDH's SecureMountService.SecureMount: it mounts the
// volume described by volumeType and options at mountPoint and returns
// the mount path, which is mountPoint, as upstream returns it. flags are
// accepted and ignored, as upstream ignores them. Only "block-device" is
// served; see the package documentation for its options. On error
// nothing stays mounted, mapped or linked.
func (m *Mounter) SecureMount(ctx context.Context, volumeType string, options map[string]string, flags []string, mountPoint string) (string, error) {
	switch volumeType {
	case VolumeBlockDevice:
		if err := m.Reap(ctx); err != nil {
			log.G(ctx).WithError(err).Warn("securemount: releasing volumes unmounted by others")
		}
		if err := m.blockDevice(ctx, options, mountPoint); err != nil {
			return "", fail(classOf(err), msgBlockDevice, err)
		}
		return mountPoint, nil
	case volumeAliyunOSS:
		return "", fail(ErrUnsupported, msgAliyunOss, errors.New("volume type `alibaba-cloud-oss` is not supported by cocoon"))
	}
	return "", fail(ErrUnknownVolumeType, msgStorageTypeNotRecognized, nil)
}

// classOf returns the class of the outermost cdhError in err's chain, so
// a wrapper carries its cause's class (ErrLUKS2 when there is none).
func classOf(err error) error {
	var e *cdhError
	if errors.As(err, &e) {
		return e.class
	}
	return ErrLUKS2
}

func (m *Mounter) blockDevice(ctx context.Context, options map[string]string, mountPoint string) error {
	p, err := parseOptions(options)
	if err != nil {
		return err
	}
	if !filepath.IsAbs(mountPoint) || filepath.Clean(mountPoint) == "/" {
		return fail(ErrInvalidOptions, msgLuks2, fmt.Errorf("mount_point `%s` must be an absolute path other than /", clip(mountPoint)))
	}
	point := filepath.Clean(mountPoint)
	path, err := m.devicePath(p)
	if err != nil {
		return err
	}
	src, err := statSource(path)
	if err != nil {
		return err
	}
	if p.mapperName == "" {
		p.mapperName = uuid.NewString() // upstream's default name
	}
	if err := m.reserve(point, src.id, p.mapperName); err != nil {
		return err
	}
	mt, err := m.setUp(ctx, p, src, point)
	m.commit(point, src.id, p.mapperName, mt)
	return err
}

// reserve claims the mount point, the device and the mapper name for a
// set-up in progress.
func (m *Mounter) reserve(point, deviceID, name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.byPoint[point]; ok {
		return fail(ErrBusy, msgLuks2, fmt.Errorf("mount point %s already holds a secure mount", point))
	}
	if other, ok := m.devices[deviceID]; ok {
		return fail(ErrBusy, msgLuks2, fmt.Errorf("the device is already secure-mounted at %s", other))
	}
	if other, ok := m.names[name]; ok {
		return fail(ErrBusy, msgLuks2, fmt.Errorf("mapperName `%s` is already used by the secure mount at %s", name, other))
	}
	m.byPoint[point] = nil
	m.devices[deviceID] = point
	m.names[name] = point
	return nil
}

// commit records a finished set-up, or releases the reservation when mt
// is nil.
func (m *Mounter) commit(point, deviceID, name string, mt *mount) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if mt != nil {
		m.byPoint[point] = mt
		return
	}
	delete(m.byPoint, point)
	delete(m.devices, deviceID)
	delete(m.names, name)
}

// setUp opens or creates the LUKS2 volume and presents it at point.
func (m *Mounter) setUp(ctx context.Context, p *params, src *sourceDevice, point string) (*mount, error) {
	if busy, err := mountinfo.Mounted(point); err == nil && busy {
		return nil, fail(ErrBusy, msgLuks2, fmt.Errorf("%s is already a mount point", point))
	}
	var key []byte
	if p.hasKey {
		var err error
		if key, err = m.getKey(ctx, p.key); err != nil {
			return nil, err
		}
		defer luks2.Zero(key)
	}
	logger := log.G(ctx).WithFields(log.Fields{
		"device": src.path, "mount_point": point, "source_type": p.source, "target_type": p.target,
		"mapper_name": p.mapperName, "key_source": keySource(p),
	})
	// The claim checks the device is not in use; dm-crypt claims it
	// itself, so ours is dropped while cryptvol maps it.
	claim, err := src.claim()
	if err != nil {
		return nil, fail(classOf(err), msgLuks2, fail(classOf(err), stageMsg(p), err))
	}
	if claim != nil {
		claim.Close()
	}
	vol, formatted, err := m.openVolume(ctx, p, src, key)
	if err != nil {
		return nil, err
	}
	mt := &mount{point: point, target: p.target, vol: vol, deviceID: src.id, name: p.mapperName, ephemeral: key == nil}
	if err := m.present(ctx, p, mt); err != nil {
		return nil, errors.Join(err, m.undo(ctx, mt, src, formatted))
	}
	if src.block && vol.Engine() == cryptvol.EngineUserspace {
		if mt.claim, err = src.claim(); err != nil {
			err = fail(classOf(err), msgLuks2, err)
			return nil, errors.Join(err, m.unpresent(mt), m.undo(ctx, mt, src, formatted))
		}
	}
	logger.WithFields(log.Fields{"engine": vol.Engine(), "block_device": vol.BlockDevice(), "ephemeral": mt.ephemeral}).Info("securemount: volume mounted")
	return mt, nil
}

func stageMsg(p *params) string {
	if p.source == SourceEmpty {
		return msgEncrypt
	}
	return msgOpen
}

// keySource names where the key came from, for logs (never the key).
func keySource(p *params) string {
	if !p.hasKey {
		return "random"
	}
	s, err := keyScheme(p.key)
	if err != nil {
		return "invalid"
	}
	return s
}

// openVolume maps the decrypted device: a fresh ephemeral volume (empty,
// no key), a fresh persistent volume (empty, key: LUKS2 header in place,
// one keyslot for the key) or an existing one (encrypted). formatted
// reports that a header was written, which a failure must undo.
func (m *Mounter) openVolume(ctx context.Context, p *params, src *sourceDevice, key []byte) (_ *cryptvol.Volume, formatted bool, _ error) {
	if p.source == SourceEmpty && key == nil {
		v, err := cryptvol.CreateEphemeral(ctx, cryptvol.EphemeralOptions{
			Backing: src.path, DeviceOnly: true, Name: p.mapperName, Engine: m.opts.Engine, RuntimeDir: m.opts.RuntimeDir,
		})
		if err != nil {
			return nil, false, fail(ErrLUKS2, msgLuks2, fail(ErrLUKS2, msgEncrypt, err))
		}
		return v, false, nil
	}
	if p.source == SourceEmpty {
		log.G(ctx).WithField("device", src.path).Warn("securemount: formatting the device as LUKS2; its data is lost")
		if err := cryptvol.Format(ctx, cryptvol.FormatOptions{Device: src.path, Passphrase: key, KDF: m.opts.KDF}); err != nil {
			return nil, false, fail(ErrLUKS2, msgLuks2, fail(ErrLUKS2, msgEncrypt, err))
		}
		formatted = true
	}
	v, err := cryptvol.Open(ctx, cryptvol.OpenOptions{
		Device: src.path, Passphrase: key, DeviceOnly: true, Name: p.mapperName, Engine: m.opts.Engine, RuntimeDir: m.opts.RuntimeDir,
	})
	if err != nil {
		err = fail(ErrLUKS2, msgLuks2, fail(ErrLUKS2, msgOpen, err))
		if formatted {
			err = errors.Join(err, wipeHeader(src.path))
		}
		return nil, false, err
	}
	return v, formatted, nil
}

// present makes the decrypted device visible at the mount point: for
// fileSystem, ext4 (created first on an empty volume) mounted there; for
// device, a symlink to the block device, as upstream links
// /dev/mapper/NAME.
func (m *Mounter) present(ctx context.Context, p *params, mt *mount) error {
	dev := mt.vol.BlockDevice()
	if p.target == TargetDevice {
		if err := os.MkdirAll(filepath.Dir(mt.point), 0o755); err != nil {
			return fail(ErrLUKS2, msgLuks2, err)
		}
		if err := os.Symlink(dev, mt.point); err != nil {
			return fail(ErrLUKS2, msgLuks2, fail(ErrLUKS2, fmt.Sprintf("Failed to create symlink from %s to %s", dev, mt.point), err))
		}
		return nil
	}
	if p.source == SourceEmpty {
		if err := runMkfs(ctx, dev, p.mkfsArgs); err != nil {
			return fail(ErrLUKS2, msgLuks2, fail(ErrLUKS2, "Failed to make filesystem Ext4 of device "+dev, err))
		}
	}
	if err := os.MkdirAll(mt.point, 0o755); err != nil {
		return fail(ErrLUKS2, msgLuks2, err)
	}
	if err := unix.Mount(dev, mt.point, FilesystemExt4, unix.MS_NOATIME, ""); err != nil {
		return fail(ErrLUKS2, msgLuks2, fail(ErrLUKS2, fmt.Sprintf("Failed to mount device %s to mount point %s", dev, mt.point), err))
	}
	return nil
}

// unpresent undoes present: unmounts the file system or removes the
// symlink.
func (m *Mounter) unpresent(mt *mount) error {
	if mt.target == TargetDevice {
		fi, err := os.Lstat(mt.point)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			return fmt.Errorf("%s is no longer our symlink; left in place", mt.point)
		}
		return os.Remove(mt.point)
	}
	// EINVAL: not a mount point (any more); ENOENT: the directory is gone.
	if err := unix.Unmount(mt.point, 0); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		class := ErrLUKS2
		if errors.Is(err, unix.EBUSY) {
			class = ErrBusy
		}
		return fail(class, msgUmountFailed+" "+mt.point, err)
	}
	return nil
}

// undo closes the volume of a failed set-up and wipes a header this
// set-up wrote, so a later "encrypted" request cannot open a volume
// that never got its file system.
func (m *Mounter) undo(ctx context.Context, mt *mount, src *sourceDevice, formatted bool) error {
	err := mt.vol.Close(ctx)
	if err == nil && formatted {
		err = wipeHeader(src.path)
	}
	return err
}

func wipeHeader(path string) error {
	if err := cryptvol.WipeHeader(path, 0, false); err != nil {
		return fmt.Errorf("wiping the LUKS2 header written to %s: %w", path, err)
	}
	return nil
}

// Unmount tears down the secure mount at mountPoint: unmounts its file
// system (or removes its device symlink), unmaps the volume and forgets
// its key. An ephemeral volume's data is gone for good; a persistent one
// can be secure-mounted again as "encrypted". A busy file system fails
// with ErrBusy and stays mounted.
func (m *Mounter) Unmount(ctx context.Context, mountPoint string) error {
	point := filepath.Clean(mountPoint)
	m.mu.Lock()
	mt := m.byPoint[point]
	switch {
	case mt == nil:
		m.mu.Unlock()
		return fail(ErrNotMounted, msgUmountFailed+" "+clip(mountPoint), errors.New("no secure mount there"))
	case mt.closing:
		m.mu.Unlock()
		return fail(ErrBusy, msgUmountFailed+" "+point, errors.New("already being unmounted"))
	}
	mt.closing = true
	m.mu.Unlock()

	err := m.unpresent(mt)
	if err == nil {
		err = mt.vol.Close(ctx)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err != nil {
		mt.closing = false
		return err
	}
	if mt.claim != nil {
		mt.claim.Close()
	}
	delete(m.byPoint, point)
	delete(m.devices, mt.deviceID)
	delete(m.names, mt.name)
	log.G(ctx).WithFields(log.Fields{"mount_point": point, "ephemeral": mt.ephemeral}).Info("securemount: volume unmounted")
	return nil
}

// Reap releases the volumes whose file system is no longer mounted
// anywhere: the kata-agent unmounts what CDH mounted itself (and closes
// the dm-crypt mapping it finds with cryptsetup), which under the
// userspace engine would leave the engine's loop device, FUSE mount and
// claim behind. A file system is gone when its decrypted block device
// opens exclusively: a mounted ext4, lazily detached or bind-mounted
// elsewhere included, holds it. Device targets are never reaped (a
// container may hold the device open without a claim). SecureMount calls
// Reap first; the daemon may also call it periodically.
func (m *Mounter) Reap(ctx context.Context) error {
	m.mu.Lock()
	var candidates []*mount
	for _, mt := range m.byPoint {
		if mt != nil && !mt.closing && mt.target == TargetFS {
			candidates = append(candidates, mt)
		}
	}
	m.mu.Unlock()
	var errs []error
	for _, mt := range candidates {
		f, err := os.OpenFile(mt.vol.BlockDevice(), os.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC, 0)
		if err != nil {
			continue // still mounted somewhere (EBUSY), or being torn down
		}
		f.Close()
		switch err := m.Unmount(ctx, mt.point); {
		case err == nil:
			log.G(ctx).WithField("mount_point", mt.point).Info("securemount: released a volume unmounted by someone else")
		case !errors.Is(err, ErrNotMounted) && !errors.Is(err, ErrBusy): // else: another caller got there first
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Close unmounts every secure mount; the first failures are returned and
// the volumes that failed stay mounted.
func (m *Mounter) Close(ctx context.Context) error {
	m.mu.Lock()
	var points []string
	for p, mt := range m.byPoint {
		if mt != nil {
			points = append(points, p)
		}
	}
	m.mu.Unlock()
	var errs []error
	for _, p := range points {
		if err := m.Unmount(ctx, p); err != nil && !errors.Is(err, ErrNotMounted) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
