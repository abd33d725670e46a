package securemount

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Option names of a block-device volume, as CDH reads them
// (volume_type/blockdevice BlockDeviceParameters, drivers/luks2
// Luks2MountParameters and TargetType). Others are ignored, as upstream's
// deserializer ignores them.
const (
	optDeviceID       = "deviceId"
	optDevicePath     = "devicePath"
	optSourceType     = "sourceType"
	optKey            = "key"
	optEncryptionType = "encryptionType"
	optTargetType     = "targetType"
	optFilesystemType = "filesystemType"
	optMkfsOpts       = "mkfsOpts"
	optMapperName     = "mapperName"
	optDataIntegrity  = "dataIntegrity"
)

// Values of sourceType, encryptionType, targetType and filesystemType.
const (
	SourceEmpty     = "empty"
	SourceEncrypted = "encrypted"
	EncryptionLUKS2 = "luks2"
	encryptionZFS   = "zfs"
	TargetDevice    = "device"
	TargetFS        = "fileSystem"
	FilesystemExt4  = "ext4"
)

// params is a parsed block-device request. Presence matters where it does
// upstream: a "key" option present but empty is an illegal key URI, not a
// missing key.
type params struct {
	deviceID, devicePath       string
	hasDeviceID, hasDevicePath bool
	source                     string // SourceEmpty or SourceEncrypted
	key                        string
	hasKey                     bool
	target                     string // TargetDevice or TargetFS
	mkfsArgs                   []string
	mapperName                 string // "" when absent
}

// parseOptions reads the options map the way upstream deserializes it,
// with its texts: missing fields and unknown variants are serde's errors
// behind "Failed to serialize or deserialize JSON". It refuses what
// cocoon cannot serve (zfs, dataIntegrity) before anything is touched.
func parseOptions(o map[string]string) (*params, error) {
	p := &params{}
	p.deviceID, p.hasDeviceID = o[optDeviceID]
	p.devicePath, p.hasDevicePath = o[optDevicePath]
	p.key, p.hasKey = o[optKey]
	var err error
	if p.source, err = variant(o, optSourceType, true, SourceEncrypted, SourceEmpty); err != nil {
		return nil, err
	}
	enc, err := variant(o, optEncryptionType, true, EncryptionLUKS2, encryptionZFS)
	if err != nil {
		return nil, err
	}
	if enc == encryptionZFS {
		return nil, fail(ErrUnsupported, msgZfs, errors.New("ZFS volumes are not supported by cocoon (use encryptionType `luks2`)"))
	}
	if err := checkIntegrity(o); err != nil {
		return nil, err
	}
	if p.target, err = variant(o, optTargetType, true, TargetDevice, TargetFS); err != nil {
		return nil, err
	}
	if p.target == TargetFS {
		// filesystemType defaults to ext4, the only variant upstream has.
		if _, err := variant(o, optFilesystemType, false, FilesystemExt4); err != nil {
			return nil, err
		}
		if p.source == SourceEmpty {
			if p.mkfsArgs, err = mkfsArgs(o[optMkfsOpts]); err != nil {
				return nil, fail(ErrInvalidOptions, msgLuks2, err)
			}
		}
	}
	if name, ok := o[optMapperName]; ok {
		if err := checkMapperName(name); err != nil {
			return nil, fail(ErrInvalidOptions, msgLuks2, err)
		}
		p.mapperName = name
	}
	if p.source == SourceEncrypted && !p.hasKey {
		return nil, fail(ErrInvalidOptions, msgLuks2, fail(ErrInvalidOptions, msgOpen,
			errors.New("sourceType `encrypted` needs a key (without one a random key is generated, which opens nothing)")))
	}
	return p, nil
}

// variant reads an enum option with serde's error texts.
func variant(o map[string]string, name string, required bool, allowed ...string) (string, error) {
	v, ok := o[name]
	if !ok {
		if required {
			return "", fail(ErrInvalidOptions, msgSerde, fmt.Errorf("missing field `%s`", name))
		}
		return allowed[0], nil
	}
	for _, a := range allowed {
		if v == a {
			return v, nil
		}
	}
	return "", fail(ErrInvalidOptions, msgSerde, fmt.Errorf("unknown variant `%s`, expected %s", clip(v), expected(allowed)))
}

// expected words a variant list as serde does: `a`, `a` or `b`, `a`, `b` or `c`.
func expected(allowed []string) string {
	q := make([]string, len(allowed))
	for i, a := range allowed {
		q[i] = "`" + a + "`"
	}
	if len(q) == 1 {
		return q[0]
	}
	return strings.Join(q[:len(q)-1], ", ") + " or " + q[len(q)-1]
}

// checkIntegrity refuses dataIntegrity=true. Upstream treats every value
// but "true" as false; we also refuse values that are neither, so a
// caller asking for integrity in other words is not silently served
// without it.
func checkIntegrity(o map[string]string) error {
	switch v := o[optDataIntegrity]; v {
	case "", "false":
		return nil
	case "true":
		return fail(ErrIntegrityUnsupported, msgLuks2, errors.New(
			"dataIntegrity `true` needs dm-integrity (LUKS2 authenticated encryption), which neither cocoon engine (dm-crypt, userspace) provides"))
	default:
		return fail(ErrInvalidOptions, msgSerde, fmt.Errorf("invalid value `%s` for `dataIntegrity`, expected `true` or `false`", clip(v)))
	}
}

// checkMapperName accepts device-mapper names cryptsetup would accept
// that are also safe in a FUSE source and a log line.
func checkMapperName(name string) error {
	if name == "" || len(name) > 127 || name == "." || name == ".." {
		return fmt.Errorf("mapperName `%s` must be 1 to 127 characters, neither `.` nor `..`", clip(name))
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("._+-", c)) {
			return fmt.Errorf("mapperName `%s` may hold only A-Z a-z 0-9 . _ + -", clip(name))
		}
	}
	return nil
}

// clip bounds and escapes a caller's value quoted back in an error.
func clip(s string) string {
	const limit = 64
	suffix := ""
	if len(s) > limit {
		s, suffix = s[:limit], "..."
	}
	q := strconv.Quote(s)
	return q[1:len(q)-1] + suffix
}
