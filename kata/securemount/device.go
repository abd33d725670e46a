package securemount

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// devicePath resolves the source device: deviceId (MAJ:MIN, through
// sysfs' uevent DEVNAME) wins over devicePath, as upstream.
func (m *Mounter) devicePath(p *params) (string, error) {
	switch {
	case p.hasDeviceID:
		major, minor, err := parseDeviceID(p.deviceID)
		if err != nil {
			return "", err
		}
		return m.deviceByNumber(major, minor)
	case p.hasDevicePath:
		if !filepath.IsAbs(p.devicePath) {
			return "", fail(ErrInvalidOptions, msgIOError, fmt.Errorf("devicePath `%s` is not an absolute path", clip(p.devicePath)))
		}
		return filepath.Clean(p.devicePath), nil
	}
	return "", fail(ErrInvalidOptions, msgNoDeviceSpecified, nil)
}

func parseDeviceID(id string) (major, minor uint32, err error) {
	maj, min, ok := strings.Cut(id, ":")
	if !ok || strings.Contains(min, ":") {
		return 0, 0, fail(ErrInvalidOptions, msgIllegalDeviceID, nil)
	}
	a, err1 := strconv.ParseUint(maj, 10, 32)
	b, err2 := strconv.ParseUint(min, 10, 32)
	if err1 != nil || err2 != nil {
		return 0, 0, fail(ErrInvalidOptions, msgIllegalDeviceID, nil)
	}
	return uint32(a), uint32(b), nil
}

// maxUevent bounds what is read of a sysfs uevent file.
const maxUevent = 64 << 10

// deviceByNumber reads DEVNAME from /sys/dev/block/MAJ:MIN/uevent.
func (m *Mounter) deviceByNumber(major, minor uint32) (string, error) {
	f, err := os.Open(filepath.Join(m.sysfs, "dev", "block", fmt.Sprintf("%d:%d", major, minor), "uevent"))
	if err != nil {
		return "", fail(ErrNoDevice, msgIOError, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(io.LimitReader(f, maxUevent))
	for sc.Scan() {
		name, ok := strings.CutPrefix(sc.Text(), "DEVNAME=")
		if !ok {
			continue
		}
		// DEVNAME is relative to /dev (e.g. "loop0", "mapper/x"); never
		// let it climb out.
		if name == "" || filepath.IsAbs(name) || !filepath.IsLocal(name) {
			break
		}
		return filepath.Join("/dev", name), nil
	}
	return "", fail(ErrNoDevice, fmt.Sprintf("Failed to get device path with major: %d, minor: %d", major, minor), nil)
}

// sourceDevice is the opened identity of the source.
type sourceDevice struct {
	path  string
	id    string // "b:MAJ:MIN" or "f:DEV:INO": two requests for one device compare equal
	block bool
}

func statSource(path string) (*sourceDevice, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nil, fail(ErrNoDevice, msgIOError, &os.PathError{Op: "stat", Path: path, Err: err})
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFBLK:
		return &sourceDevice{path: path, block: true, id: fmt.Sprintf("b:%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))}, nil
	case unix.S_IFREG:
		return &sourceDevice{path: path, id: fmt.Sprintf("f:%d:%d", st.Dev, st.Ino)}, nil
	}
	return nil, fail(ErrInvalidOptions, msgIOError, fmt.Errorf("%s is neither a block device nor a regular file", path))
}

// claim opens a block device exclusively (O_EXCL): it fails with EBUSY
// while the device is mounted, mapped by device-mapper or claimed by
// another exclusive opener, as cryptsetup refuses to format or open a
// device in use. The returned file holds the claim until closed; regular
// files cannot be claimed and get nil.
func (d *sourceDevice) claim() (*os.File, error) {
	if !d.block {
		return nil, nil
	}
	f, err := os.OpenFile(d.path, os.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.EBUSY) {
		return nil, fail(ErrBusy, d.path, errors.New("the device is in use (mounted, mapped or claimed by another volume)"))
	}
	if err != nil {
		return nil, fail(ErrNoDevice, msgIOError, err)
	}
	return f, nil
}
