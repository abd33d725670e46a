package securemount

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// base is a valid empty/fileSystem request; cases edit a copy.
func base() map[string]string {
	return map[string]string{
		"devicePath": "/dev/loop0", "sourceType": "empty", "encryptionType": "luks2",
		"targetType": "fileSystem", "filesystemType": "ext4", "key": "kbs:///default/vol/key",
	}
}

func edit(set map[string]string, del ...string) map[string]string {
	o := base()
	for k, v := range set {
		o[k] = v
	}
	for _, k := range del {
		delete(o, k)
	}
	return o
}

// TestParseOptionsErrors: each malformed request fails with upstream's
// text (serde's for missing fields and unknown variants) and its class.
func TestParseOptionsErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		opts  map[string]string
		want  string
		class error
	}{
		{"no sourceType", edit(nil, "sourceType"),
			"Failed to serialize or deserialize JSON: missing field `sourceType`", ErrInvalidOptions},
		{"bad sourceType", edit(map[string]string{"sourceType": "blank"}),
			"Failed to serialize or deserialize JSON: unknown variant `blank`, expected `encrypted` or `empty`", ErrInvalidOptions},
		{"no encryptionType", edit(nil, "encryptionType"),
			"Failed to serialize or deserialize JSON: missing field `encryptionType`", ErrInvalidOptions},
		{"luks1", edit(map[string]string{"encryptionType": "luks1"}),
			"Failed to serialize or deserialize JSON: unknown variant `luks1`, expected `luks2` or `zfs`", ErrInvalidOptions},
		{"zfs", edit(map[string]string{"encryptionType": "zfs"}),
			"Error when doing zfs operation: ZFS volumes are not supported by cocoon (use encryptionType `luks2`)", ErrUnsupported},
		{"no targetType", edit(nil, "targetType"),
			"Failed to serialize or deserialize JSON: missing field `targetType`", ErrInvalidOptions},
		{"bad targetType", edit(map[string]string{"targetType": "filesystem"}),
			"Failed to serialize or deserialize JSON: unknown variant `filesystem`, expected `device` or `fileSystem`", ErrInvalidOptions},
		{"xfs", edit(map[string]string{"filesystemType": "xfs"}),
			"Failed to serialize or deserialize JSON: unknown variant `xfs`, expected `ext4`", ErrInvalidOptions},
		{"integrity", edit(map[string]string{"dataIntegrity": "true"}),
			"Error when doing luks2 operation: dataIntegrity `true` needs dm-integrity (LUKS2 authenticated encryption), which neither cocoon engine (dm-crypt, userspace) provides", ErrIntegrityUnsupported},
		{"integrity yes", edit(map[string]string{"dataIntegrity": "yes"}),
			"Failed to serialize or deserialize JSON: invalid value `yes` for `dataIntegrity`, expected `true` or `false`", ErrInvalidOptions},
		{"encrypted without key", edit(map[string]string{"sourceType": "encrypted"}, "key"),
			"Error when doing luks2 operation: Failed to open LUKS2 device: sourceType `encrypted` needs a key (without one a random key is generated, which opens nothing)", ErrInvalidOptions},
		{"mapper slash", edit(map[string]string{"mapperName": "../x"}),
			"Error when doing luks2 operation: mapperName `../x` may hold only A-Z a-z 0-9 . _ + -", ErrInvalidOptions},
		{"mapper long", edit(map[string]string{"mapperName": strings.Repeat("a", 128)}),
			"Error when doing luks2 operation: mapperName `" + strings.Repeat("a", 64) + "...` must be 1 to 127 characters, neither `.` nor `..`", ErrInvalidOptions},
		{"mapper dotdot", edit(map[string]string{"mapperName": ".."}),
			"Error when doing luks2 operation: mapperName `..` must be 1 to 127 characters, neither `.` nor `..`", ErrInvalidOptions},
		{"mkfs -d", edit(map[string]string{"mkfsOpts": "-m 0 -d /etc"}),
			"Error when doing luks2 operation: mkfsOpts: option -d is refused (it copies a guest directory into the file system)", ErrInvalidOptions},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseOptions(tc.opts)
			if err == nil {
				t.Fatal("accepted")
			}
			if err.Error() != tc.want {
				t.Fatalf("error\n got %q\nwant %q", err, tc.want)
			}
			if !errors.Is(err, tc.class) {
				t.Fatalf("error %v is not %v", err, tc.class)
			}
		})
	}
}

func TestParseOptionsAccepted(t *testing.T) {
	p, err := parseOptions(edit(map[string]string{"mkfsOpts": "-O ^has_journal -m 0 -i 163840 -I 128", "dataIntegrity": "false", "unknownOption": "ignored"}, "filesystemType"))
	if err != nil {
		t.Fatal(err)
	}
	if p.source != SourceEmpty || p.target != TargetFS || !p.hasKey || p.hasDeviceID || !p.hasDevicePath {
		t.Fatalf("parsed %+v", p)
	}
	if got := strings.Join(p.mkfsArgs, " "); got != "-O ^has_journal -m 0 -i 163840 -I 128" {
		t.Fatalf("mkfs args %q", got)
	}
	// mkfsOpts is only read when a file system is made.
	p, err = parseOptions(edit(map[string]string{"sourceType": "encrypted", "targetType": "device", "mkfsOpts": "-d /etc"}))
	if err != nil || p.mkfsArgs != nil {
		t.Fatalf("device target: %+v, %v", p, err)
	}
}

func TestMkfsArgs(t *testing.T) {
	for opts, wantErr := range map[string]string{
		"":                                "",
		"-E lazy_itable_init=0,nodiscard": "",
		"-qF -b4096 -L data":              "",
		"-J size=8":                       "",
		"-Odir_index":                     "",
		"-ld/x":                           "option -l is refused",
		"-qz /tmp/undo":                   "option -z is refused",
		"-J device=/dev/sda":              "-J device= is refused",
		"-m 0 /dev/sda":                   "`/dev/sda` is not an mkfs.ext4 option",
		"--help":                          "`--help` is not an mkfs.ext4 option",
		"-x":                              "unknown mkfs.ext4 option -x",
		"-m":                              "option -m needs a value",
		strings.Repeat("-q ", 65):         "more than 64",
		"-L " + strings.Repeat("x", 5000): "more than 4096",
		"-L\tlabel\n-m\r0":                "",
		"- ":                              "`-` is not an mkfs.ext4 option",
		"-c":                              "",
		"-T huge":                         "",
		"-U 2b7b8d3c-8d3e-4f1e-9c0a-9a7b6c5d4e3f": "",
	} {
		_, err := mkfsArgs(opts)
		switch {
		case wantErr == "" && err != nil:
			t.Errorf("%q: %v", opts, err)
		case wantErr != "" && (err == nil || !strings.Contains(err.Error(), wantErr)):
			t.Errorf("%q: error %v, want %q", opts, err, wantErr)
		}
	}
}

func TestDeviceResolution(t *testing.T) {
	sys := t.TempDir()
	uevent := func(id, body string) {
		dir := filepath.Join(sys, "dev", "block", id)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "uevent"), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	uevent("7:3", "MAJOR=7\nMINOR=3\nDEVNAME=loop3\nDEVTYPE=disk\n")
	uevent("7:4", "MAJOR=7\nMINOR=4\nDEVTYPE=disk\n")
	uevent("7:5", "DEVNAME=../etc/passwd\n")
	m := New(Options{SysfsDir: sys})
	for _, tc := range []struct {
		p     params
		want  string
		class error
	}{
		{params{hasDeviceID: true, deviceID: "7:3"}, "/dev/loop3", nil},
		{params{hasDeviceID: true, deviceID: "7:3", hasDevicePath: true, devicePath: "/dev/vdb"}, "/dev/loop3", nil},
		{params{hasDevicePath: true, devicePath: "/dev//vdb/"}, "/dev/vdb", nil},
		{params{hasDeviceID: true, deviceID: "7"}, "device_id must be in the format of `MAJ:MIN", ErrInvalidOptions},
		{params{hasDeviceID: true, deviceID: "7:3:1"}, "device_id must be in the format of `MAJ:MIN", ErrInvalidOptions},
		{params{hasDeviceID: true, deviceID: "a:b"}, "device_id must be in the format of `MAJ:MIN", ErrInvalidOptions},
		{params{hasDeviceID: true, deviceID: ""}, "device_id must be in the format of `MAJ:MIN", ErrInvalidOptions},
		{params{hasDeviceID: true, deviceID: "7:4"}, "Failed to get device path with major: 7, minor: 4", ErrNoDevice},
		{params{hasDeviceID: true, deviceID: "7:5"}, "Failed to get device path with major: 7, minor: 5", ErrNoDevice},
		{params{hasDeviceID: true, deviceID: "7:6"}, "I/O error: open " + filepath.Join(sys, "dev/block/7:6/uevent") + ": no such file or directory", ErrNoDevice},
		{params{}, "Either `device_id` or `device_path` must be specified", ErrInvalidOptions},
		{params{hasDevicePath: true, devicePath: "dev/vdb"}, "I/O error: devicePath `dev/vdb` is not an absolute path", ErrInvalidOptions},
	} {
		got, err := m.devicePath(&tc.p)
		if tc.class == nil {
			if err != nil || got != tc.want {
				t.Errorf("%+v: %q, %v", tc.p, got, err)
			}
			continue
		}
		if err == nil || err.Error() != tc.want || !errors.Is(err, tc.class) {
			t.Errorf("%+v: error %v, want %q (%v)", tc.p, err, tc.want, tc.class)
		}
	}
}

func TestVolumeTypes(t *testing.T) {
	m := New(Options{})
	ctx := context.Background()
	for vt, want := range map[string]struct {
		text  string
		class error
	}{
		"aliyun":            {"Failed to recognize the storage type: Matching variant not found", ErrUnknownVolumeType},
		"":                  {"Failed to recognize the storage type: Matching variant not found", ErrUnknownVolumeType},
		"Block-Device":      {"Failed to recognize the storage type: Matching variant not found", ErrUnknownVolumeType},
		"alibaba-cloud-oss": {"Error when mounting Aliyun OSS: volume type `alibaba-cloud-oss` is not supported by cocoon", ErrUnsupported},
		"block-device":      {"Error when mounting Block device: Failed to serialize or deserialize JSON: missing field `sourceType`", ErrInvalidOptions},
	} {
		mp, err := m.SecureMount(ctx, vt, map[string]string{}, nil, "/mnt/x")
		if err == nil || err.Error() != want.text || !errors.Is(err, want.class) || mp != "" {
			t.Errorf("%q: %q, error %v, want %q", vt, mp, err, want.text)
		}
	}
	// The mount point is checked before anything is touched.
	_, err := m.SecureMount(ctx, "block-device", base(), nil, "relative/dir")
	if err == nil || !errors.Is(err, ErrInvalidOptions) || !strings.Contains(err.Error(), "mount_point `relative/dir` must be an absolute path") {
		t.Fatalf("relative mount point: %v", err)
	}
}
