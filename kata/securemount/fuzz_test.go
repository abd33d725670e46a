package securemount

import (
	"strings"
	"testing"
)

// FuzzParseOptions: any options map parses or fails with a classified
// error; an accepted one names a source, a target and, for mkfs, options
// only.
func FuzzParseOptions(f *testing.F) {
	f.Add("deviceId", "7:0", "empty", "luks2", "fileSystem", "ext4", "-U 2b7b8d3c-8d3e-4f1e-9c0a-9a7b6c5d4e3f", "false")
	f.Add("devicePath", "/dev/vdb", "encrypted", "luks2", "device", "", "", "")
	f.Add("devicePath", "/dev/vdb", "empty", "zfs", "fileSystem", "xfs", "-d /etc", "true")
	f.Fuzz(func(t *testing.T, devKey, dev, source, enc, target, fs, mkfs, integrity string) {
		o := map[string]string{devKey: dev, "sourceType": source, "encryptionType": enc, "targetType": target, "mkfsOpts": mkfs, "dataIntegrity": integrity}
		if fs != "" {
			o["filesystemType"] = fs
		}
		p, err := parseOptions(o)
		if err != nil {
			if classOf(err) == ErrLUKS2 {
				t.Fatalf("unclassified error %v", err)
			}
			return
		}
		if (p.source != SourceEmpty && p.source != SourceEncrypted) || (p.target != TargetDevice && p.target != TargetFS) {
			t.Fatalf("accepted %+v", p)
		}
		if len(p.mkfsArgs) > 0 && !strings.HasPrefix(p.mkfsArgs[0], "-") {
			t.Fatalf("mkfs arguments start with a positional one: %q", p.mkfsArgs)
		}
	})
}
