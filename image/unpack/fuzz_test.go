package unpack

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// The fuzz input is a small program: each 6-byte instruction
// [type, name1, name2, name3, target, extra] becomes one tar entry built
// from the tricky vocabularies below, so that mutations explore
// combinations of symlinks, hardlinks, whiteouts and names rather than tar
// checksums. An input starting with 0xff is fed to Extract as a raw tar.
var (
	fuzzNames = []string{"a", "b", "link", "..", ".", "", ".wh.a", ".wh..wh..opq", ".wh.link", "etc", "sentinel", "x", "esc", "lower-file"}
	// Link targets: escapes, absolute paths, chains, lower-layer paths.
	// "@sentinel" stands for the absolute path of the sandbox's sentinel
	// directory: a host directory that a wrong resolution would write into.
	fuzzTargets = []string{"..", "../..", "../../..", "/", "@sentinel", "a", "a/b", "link", "link/x", "../sentinel",
		"../sentinel/x", "/../sentinel", "b/../..", "x", "lower-file", "esc/x", "", "/link/..", "a/../../sentinel", "lowerdir/f"}
	fuzzXattrs = []string{"user.x", "trusted.overlay.opaque", "trusted.overlay.redirect", "security.capability",
		"user.overlay.x", "security.selinux", "trusted.x"}
)

func fuzzProgram(prog []byte, sentinel string) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for ; len(prog) >= 6; prog = prog[6:] {
		var comps []string
		for _, c := range prog[1:4] {
			if c != 0 {
				comps = append(comps, fuzzNames[int(c-1)%len(fuzzNames)])
			}
		}
		h := tar.Header{Name: strings.Join(comps, "/"), Mode: int64(prog[5]) | 0o600, Format: tar.FormatPAX}
		target := strings.ReplaceAll(fuzzTargets[int(prog[4])%len(fuzzTargets)], "@sentinel", sentinel)
		body := ""
		switch prog[0] % 8 {
		case 0:
			h.Typeflag = tar.TypeReg
			body = strings.Repeat("d", int(prog[5]))
		case 1:
			h.Typeflag = tar.TypeDir
		case 2:
			h.Typeflag, h.Linkname = tar.TypeSymlink, target
		case 3:
			h.Typeflag, h.Linkname = tar.TypeLink, target
		case 4:
			h.Typeflag = tar.TypeFifo
		case 5:
			h.Typeflag, h.Devmajor, h.Devminor = tar.TypeChar, 1, 3
		case 6:
			h.Typeflag = tar.TypeReg
			h.PAXRecords = map[string]string{"SCHILY.xattr." + fuzzXattrs[int(prog[4])%len(fuzzXattrs)]: "y"}
		case 7:
			h.Typeflag = tar.TypeDir
			h.PAXRecords = map[string]string{"SCHILY.xattr." + fuzzXattrs[int(prog[4])%len(fuzzXattrs)]: "y"}
		}
		h.Size = int64(len(body))
		if tw.WriteHeader(&h) != nil {
			continue // the writer refuses some combinations; skip them
		}
		_, _ = tw.Write([]byte(body))
	}
	_ = tw.Close()
	return buf.Bytes()
}

// treeDigest summarises a directory tree (names, types, modes, owners,
// link targets, contents) to detect any modification.
func treeDigest(t testing.TB, root string) string {
	t.Helper()
	h := sha256.New()
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		fmt.Fprintf(h, "%s %o %d:%d %d\n", p, st.Mode, st.Uid, st.Gid, st.Mtim.Nano())
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFLNK:
			target, _ := os.Readlink(p)
			fmt.Fprintln(h, target)
		case unix.S_IFREG:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			h.Write(b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func fuzzLower(t testing.TB, base string) string {
	t.Helper()
	lower := filepath.Join(base, "lower")
	if err := os.MkdirAll(filepath.Join(lower, "lowerdir"), 0o750); err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string]string{"lower-file": "lower", "lowerdir/f": "f", "a/b": "ab"} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(lower, name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(lower, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("../../sentinel", filepath.Join(lower, "esc")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mknod(filepath.Join(lower, "x"), unix.S_IFCHR, 0); err != nil {
		t.Fatal(err)
	}
	return lower
}

func FuzzExtract(f *testing.F) {
	seeds := [][]byte{
		// symlink link -> ../../.. then file link/x
		{2, 3, 0, 0, 2, 0, 0, 3, 12, 0, 0, 5},
		// symlink link -> <absolute sentinel path> then file link/etc
		{2, 3, 0, 0, 4, 0, 0, 3, 10, 0, 0, 5},
		// hardlinks to a lower file, to ../sentinel/x, through a lower escape
		{3, 1, 0, 0, 14, 0, 3, 2, 0, 0, 10, 0, 3, 12, 0, 0, 15, 0},
		// dir a, whiteout .wh.a, opaque marker, fifo, device
		{1, 1, 0, 0, 0, 0x55, 0, 7, 0, 0, 0, 0, 0, 1, 8, 0, 0, 0, 4, 2, 0, 0, 0, 0, 5, 2, 12, 0, 0, 0},
		// forged overlay xattrs
		{6, 1, 0, 0, 1, 0, 7, 2, 0, 0, 2, 0},
		// symlink chain a/b -> ../link, link -> a, write a/b/x
		{1, 1, 0, 0, 0, 0, 2, 1, 2, 0, 17, 0, 2, 3, 0, 0, 5, 0, 0, 1, 2, 12, 0, 7},
	}
	for _, s := range seeds {
		f.Add(s)
	}
	raw := buildTar(f, dir("d/"), file("d/f", "x"), symlink("l", "../.."), hardlink("h", "d/f"), file(".wh.z", ""))
	f.Add(append([]byte{0xff}, raw...))

	f.Fuzz(func(t *testing.T, prog []byte) {
		s := newSandbox(t)
		var data []byte
		if len(prog) > 0 && prog[0] == 0xff {
			data = prog[1:]
		} else {
			data = fuzzProgram(prog, s.sentinel)
		}
		lower := fuzzLower(t, s.base)
		before := treeDigest(t, lower)
		_, err := Extract(context.Background(), bytes.NewReader(data), s.root, Options{
			MaxEntrySize: 1 << 16, MaxTotalSize: 1 << 20, MaxEntries: 256, Parents: []string{lower},
		})
		var ee *EntryError
		if err != nil && errors.As(err, &ee) && ee.Err == nil {
			t.Fatalf("EntryError without cause: %v", err)
		}
		s.checkContained(t, "lower")
		if after := treeDigest(t, lower); after != before {
			t.Fatalf("lower layer modified")
		}
		// Whatever was created stays a plain overlay upper: no devices
		// other than whiteouts, no overlay metadata except opaque=y.
		werr := filepath.WalkDir(s.root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			var st unix.Stat_t
			if err := unix.Lstat(p, &st); err != nil {
				return err
			}
			if !strings.HasPrefix(p, s.root) {
				return fmt.Errorf("%s outside the root", p)
			}
			switch st.Mode & unix.S_IFMT {
			case unix.S_IFBLK:
				return fmt.Errorf("%s: block device created", p)
			case unix.S_IFCHR:
				if st.Rdev != 0 {
					return fmt.Errorf("%s: device %x created without AllowDevices", p, st.Rdev)
				}
			}
			buf := make([]byte, 4096)
			n, _ := unix.Llistxattr(p, buf)
			for _, name := range strings.Split(string(buf[:n]), "\x00") {
				if strings.HasPrefix(name, "trusted.overlay") && name != "trusted.overlay.opaque" {
					return fmt.Errorf("%s: forged xattr %s", p, name)
				}
				if name == "trusted.overlay.opaque" {
					if v, _ := getxattr(t, p, name); v != "y" || st.Mode&unix.S_IFMT != unix.S_IFDIR {
						return fmt.Errorf("%s: forged opaque xattr %q", p, v)
					}
				}
			}
			return nil
		})
		if werr != nil {
			t.Fatal(werr)
		}
	})
}
