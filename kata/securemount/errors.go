package securemount

import (
	"errors"

	"github.com/cocoon-cc/cocoon/cryptvol"
)

// Classes of failure, for errors.Is. Every error SecureMount returns is in
// exactly one of them, except a wrong key, which is ErrWrongKey inside
// ErrLUKS2.
var (
	// ErrUnknownVolumeType: volume_type is none upstream knows.
	ErrUnknownVolumeType = errors.New("unknown volume type")
	// ErrUnsupported: upstream knows the request but cocoon does not serve
	// it (volume_type "alibaba-cloud-oss", encryptionType "zfs").
	ErrUnsupported = errors.New("not supported by cocoon")
	// ErrIntegrityUnsupported: dataIntegrity=true (dm-integrity), which
	// neither cryptvol engine provides.
	ErrIntegrityUnsupported = errors.New("dataIntegrity is not supported")
	// ErrInvalidOptions: the options (or mount_point) are malformed.
	ErrInvalidOptions = errors.New("invalid secure mount options")
	// ErrNoDevice: the device named by deviceId or devicePath is absent.
	ErrNoDevice = errors.New("no such block device")
	// ErrKey: the key could not be fetched, unsealed or read.
	ErrKey = errors.New("cannot get the volume key")
	// ErrBusy: the mount point, device or mapper name is in use.
	ErrBusy = errors.New("in use")
	// ErrLUKS2: formatting, opening, mkfs or mounting failed.
	ErrLUKS2 = errors.New("luks2 operation failed")
	// ErrNotMounted: Unmount was given a mount point SecureMount does not hold.
	ErrNotMounted = errors.New("not a secure mount")
	// ErrWrongKey: the key opens no keyslot of the LUKS2 header.
	ErrWrongKey = cryptvol.ErrWrongPassphrase
)

// Messages worded as confidential-data-hub words the same failures
// (hub/src/storage/error.rs, volume_type/blockdevice/error.rs,
// drivers/luks2.rs), so logs and callers read the same text.
const (
	msgStorageTypeNotRecognized = "Failed to recognize the storage type: Matching variant not found"
	msgAliyunOss                = "Error when mounting Aliyun OSS"
	msgBlockDevice              = "Error when mounting Block device"
	msgIllegalDeviceID          = "device_id must be in the format of `MAJ:MIN"
	msgNoDeviceSpecified        = "Either `device_id` or `device_path` must be specified"
	msgIOError                  = "I/O error"
	msgSerde                    = "Failed to serialize or deserialize JSON"
	msgIllegalKeyScheme         = "The scheme of the key uri should be `kbs`, `file` or `sealed`"
	msgGetKeyFailed             = "Failed to get key"
	msgLuks2                    = "Error when doing luks2 operation"
	msgZfs                      = "Error when doing zfs operation"
	msgEncrypt                  = "Failed to encrypt LUKS2 device"
	msgOpen                     = "Failed to open LUKS2 device"
	msgUmountFailed             = "Failed to umount device"
)

// cdhError is one link of an error chain: upstream's message for the
// failure, its cause, and the class errors.Is finds it by.
type cdhError struct {
	msg   string
	cause error
	class error
}

func (e *cdhError) Error() string {
	if e.cause == nil {
		return e.msg
	}
	return e.msg + ": " + e.cause.Error()
}

func (e *cdhError) Unwrap() error { return e.cause }

func (e *cdhError) Is(target error) bool { return target == e.class }

func fail(class error, msg string, cause error) error {
	return &cdhError{msg: msg, cause: cause, class: class}
}
