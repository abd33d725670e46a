package unpack

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

func TestExtractMetadata(t *testing.T) {
	s := newSandbox(t)
	mtime := time.Unix(1600000000, 123456789)
	atime := time.Unix(1650000000, 987654321)
	dirTime := time.Unix(1500000000, 0)
	exe := file("bin/tool", "#!/bin/sh\n")
	exe.Mode = 0o4755 | 0o2000
	exe.Uid, exe.Gid = 1234, 5678
	exe.ModTime, exe.AccessTime = mtime, atime
	exe.PAXRecords = map[string]string{
		"SCHILY.xattr.user.comment":        "hello",
		"SCHILY.xattr.security.capability": "\x01\x00\x00\x02\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
		"SCHILY.xattr.trusted.cocoon":      "t",
		"SCHILY.xattr.security.selinux":    "ignored",
	}
	tmp := dir("tmp/")
	tmp.Mode = 0o1777
	tmp.ModTime = dirTime
	bin := dir("bin/")
	bin.ModTime = dirTime
	bin.Uid, bin.Gid = 7, 8
	sl := symlink("bin/sh", "tool")
	sl.Uid, sl.Gid = 9, 10
	sl.ModTime = mtime
	fifo := ent{Header: tar.Header{Name: "run/fifo", Typeflag: tar.TypeFifo, Mode: 0o620, Uid: 3, Gid: 4}}
	layer := buildTar(t,
		dir("./"), bin, exe, sl, tmp, file("tmp/x", "x"),
		hardlink("bin/tool2", "bin/tool"), fifo,
		// Later entries replace earlier ones.
		file("etc/motd", "old"), file("etc/motd", "new"),
	)
	stats, err := s.extract(t, layer, Options{})
	if err != nil {
		t.Fatal(err)
	}
	s.checkContained(t)
	want := Stats{Entries: 10, Files: 4, Bytes: int64(len("#!/bin/sh\n") + 1 + 3 + 3)}
	if stats != want {
		t.Errorf("stats = %+v, want %+v", stats, want)
	}

	tool := filepath.Join(s.root, "bin/tool")
	st := lstat(t, tool)
	if st.Mode != unix.S_IFREG|0o6755 || st.Uid != 1234 || st.Gid != 5678 || st.Nlink != 2 {
		t.Errorf("bin/tool: mode %o uid %d gid %d nlink %d", st.Mode, st.Uid, st.Gid, st.Nlink)
	}
	if got := time.Unix(st.Mtim.Unix()); !got.Equal(mtime) {
		t.Errorf("bin/tool mtime %v, want %v", got, mtime)
	}
	if got := time.Unix(st.Atim.Unix()); !got.Equal(atime) {
		t.Errorf("bin/tool atime %v, want %v", got, atime)
	}
	for name, wantVal := range map[string]string{
		"user.comment":        "hello",
		"security.capability": exe.PAXRecords["SCHILY.xattr.security.capability"],
		"trusted.cocoon":      "t",
	} {
		if v, ok := getxattr(t, tool, name); !ok || v != wantVal {
			t.Errorf("xattr %s = %q, %v", name, v, ok)
		}
	}
	if _, ok := getxattr(t, tool, "security.selinux"); ok {
		t.Errorf("security.selinux must not be applied")
	}
	if readFile(t, tool) != "#!/bin/sh\n" || readFile(t, filepath.Join(s.root, "etc/motd")) != "new" {
		t.Errorf("file contents differ")
	}
	if t2 := lstat(t, filepath.Join(s.root, "bin/tool2")); t2.Ino != st.Ino {
		t.Errorf("bin/tool2 is not a hardlink of bin/tool")
	}

	lst := lstat(t, filepath.Join(s.root, "bin/sh"))
	if lst.Mode&unix.S_IFMT != unix.S_IFLNK || lst.Uid != 9 || lst.Gid != 10 {
		t.Errorf("bin/sh: mode %o uid %d", lst.Mode, lst.Uid)
	}
	if target, _ := os.Readlink(filepath.Join(s.root, "bin/sh")); target != "tool" {
		t.Errorf("bin/sh -> %q", target)
	}
	if got := time.Unix(lst.Mtim.Unix()); !got.Equal(mtime) {
		t.Errorf("symlink mtime %v, want %v", got, mtime)
	}

	for name, wantMode := range map[string]uint32{"tmp": unix.S_IFDIR | 0o1777, "bin": unix.S_IFDIR | 0o755, "run": unix.S_IFDIR | 0o755} {
		st := lstat(t, filepath.Join(s.root, name))
		if st.Mode != wantMode {
			t.Errorf("%s mode %o, want %o", name, st.Mode, wantMode)
		}
	}
	// Directory times are applied after their children were written.
	for _, name := range []string{"tmp", "bin"} {
		if got := time.Unix(lstat(t, filepath.Join(s.root, name)).Mtim.Unix()); !got.Equal(dirTime) {
			t.Errorf("%s mtime %v, want %v", name, got, dirTime)
		}
	}
	if b := lstat(t, filepath.Join(s.root, "bin")); b.Uid != 7 || b.Gid != 8 {
		t.Errorf("bin owner %d:%d", b.Uid, b.Gid)
	}
	ff := lstat(t, filepath.Join(s.root, "run/fifo"))
	if ff.Mode != unix.S_IFIFO|0o620 || ff.Uid != 3 || ff.Gid != 4 {
		t.Errorf("fifo mode %o owner %d:%d", ff.Mode, ff.Uid, ff.Gid)
	}
}

func TestWhiteoutsOverlayForm(t *testing.T) {
	s := newSandbox(t)
	wh := file("a/.wh.gone", "")
	wh.Uid, wh.Gid = 11, 12
	layer := buildTar(t,
		dir("a/"),
		file("a/replaced", "data"),
		file("a/.wh.replaced", ""), // whiteout after a file of this layer removes it
		wh,
		dir("b/"), file("b/kept", "k"),
		file("b/.wh..wh..opq", ""),
		file("b/.wh..wh..opq", ""), // duplicate marker counts once
		file("c/.wh..wh..opq", ""), // opaque marker creates its directory
		file(".wh..wh.plnk", ""),   // other meta entries are skipped
		dir("d/"), file("d/x/y", "y"),
		file(".wh.d", ""), // whiting out a directory of this layer removes it
	)
	stats, err := s.extract(t, layer, Options{})
	if err != nil {
		t.Fatal(err)
	}
	s.checkContained(t)
	if stats.Whiteouts != 3 || stats.OpaqueDirs != 2 {
		t.Errorf("stats = %+v", stats)
	}
	for _, name := range []string{"a/replaced", "a/gone", "d"} {
		st := lstat(t, filepath.Join(s.root, name))
		if st.Mode != unix.S_IFCHR || st.Rdev != 0 {
			t.Errorf("%s: mode %o rdev %d, want a 0/0 char device with mode 0", name, st.Mode, st.Rdev)
		}
	}
	if st := lstat(t, filepath.Join(s.root, "a/gone")); st.Uid != 11 || st.Gid != 12 {
		t.Errorf("whiteout owner %d:%d, want 11:12", st.Uid, st.Gid)
	}
	for _, d := range []string{"b", "c"} {
		if v, ok := getxattr(t, filepath.Join(s.root, d), "trusted.overlay.opaque"); !ok || v != "y" {
			t.Errorf("%s: trusted.overlay.opaque = %q, %v", d, v, ok)
		}
	}
	// Like containerd's overlay converter, an opaque marker does not
	// remove what this layer itself put in the directory.
	if readFile(t, filepath.Join(s.root, "b/kept")) != "k" {
		t.Errorf("b/kept lost")
	}
	for _, name := range []string{"a/.wh.gone", "b/.wh..wh..opq", ".wh..wh.plnk", "plnk", ".wh.d"} {
		if exists(filepath.Join(s.root, name)) {
			t.Errorf("%s must not exist", name)
		}
	}
}

// TestOverlayMount mounts the extracted directory as the upper layer of a
// real overlayfs and checks that whiteouts and opaque directories hide the
// lower files.
func TestOverlayMount(t *testing.T) {
	s := newSandbox(t)
	lower := filepath.Join(s.base, "lower")
	for name, body := range map[string]string{
		"deleted":        "lower",
		"opaque/hidden":  "lower",
		"opaque/sub/z":   "lower",
		"kept/lowerfile": "lower",
		"replaced":       "lower",
	} {
		p := filepath.Join(lower, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	layer := buildTar(t,
		file(".wh.deleted", ""),
		dir("opaque/"), file("opaque/.wh..wh..opq", ""), file("opaque/new", "upper"),
		file("kept/upperfile", "upper"),
		file("replaced", "upper"),
	)
	if _, err := s.extract(t, layer, Options{Parents: []string{lower}}); err != nil {
		t.Fatal(err)
	}
	work := filepath.Join(s.base, "work")
	merged := filepath.Join(s.base, "merged")
	for _, d := range []string{work, merged} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", lower, s.root, work)
	if err := unix.Mount("overlay", merged, "overlay", 0, opts); err != nil {
		t.Fatalf("mount overlay: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(merged, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", merged, err)
		}
	})
	for name, want := range map[string]string{
		"deleted":        "",
		"opaque/hidden":  "",
		"opaque/sub":     "",
		"opaque/new":     "upper",
		"kept/lowerfile": "lower",
		"kept/upperfile": "upper",
		"replaced":       "upper",
	} {
		b, err := os.ReadFile(filepath.Join(merged, name))
		switch {
		case want == "" && !errors.Is(err, os.ErrNotExist):
			t.Errorf("%s visible in the merged view (err %v)", name, err)
		case want != "" && (err != nil || string(b) != want):
			t.Errorf("%s = %q, %v; want %q", name, b, err, want)
		}
	}
	ents, err := os.ReadDir(filepath.Join(merged, "opaque"))
	if err != nil || len(ents) != 1 || ents[0].Name() != "new" {
		t.Errorf("opaque/ lists %v, %v; want only new", ents, err)
	}
}

func TestRefusals(t *testing.T) {
	dev := func(name string, typ byte) ent {
		return ent{Header: tar.Header{Name: name, Typeflag: typ, Mode: 0o600, Devmajor: 1, Devminor: 3}}
	}
	withXattr := func(e ent, k, v string) ent {
		e.PAXRecords = map[string]string{"SCHILY.xattr." + k: v}
		return e
	}
	big := file("big", strings.Repeat("x", 2000))
	for _, tc := range []struct {
		name  string
		ents  []ent
		opts  Options
		entry string
		want  error
		msg   string
	}{
		{"absolute", []ent{file("/etc/passwd", "x")}, Options{}, "/etc/passwd", ErrUnsafeEntry, "absolute path"},
		{"dotdot escape", []ent{file("etc/../../x", "x")}, Options{}, "etc/../../x", ErrUnsafeEntry, "path escapes the layer root"},
		{"dotdot inside", []ent{file("etc/../x", "x")}, Options{}, "etc/../x", ErrUnsafeEntry, `".." component`},
		{"relative symlink escape", []ent{symlink("link", "../../.."), file("link/x", "x")}, Options{}, "link/x", ErrUnsafeEntry, "escapes the layer root"},
		{"nested symlink escape", []ent{dir("a/"), symlink("a/up", ".."), symlink("a/l", "up/.."), file("a/l/x", "x")}, Options{}, "a/l/x", ErrUnsafeEntry, "escapes the layer root"},
		{"absolute symlink with dotdot", []ent{symlink("link", "/../sentinel"), file("link/x", "x")}, Options{}, "link/x", ErrUnsafeEntry, "escapes the layer root"},
		{"hardlink escape", []ent{hardlink("h", "../sentinel/x")}, Options{}, "h", ErrUnsafeEntry, "path escapes the layer root"},
		{"hardlink absolute", []ent{hardlink("h", "/etc/passwd")}, Options{}, "h", ErrUnsafeEntry, "absolute path"},
		{"hardlink through escaping symlink", []ent{symlink("up", "../.."), hardlink("h", "up/etc/passwd")}, Options{}, "h", ErrUnsafeEntry, "escapes the layer root"},
		{"hardlink to directory", []ent{dir("d/"), hardlink("h", "d")}, Options{}, "h", ErrUnsafeEntry, "is a directory"},
		{"hardlink to root", []ent{hardlink("h", "./")}, Options{}, "h", ErrUnsafeEntry, "layer root"},
		{"hardlink missing", []ent{hardlink("h", "nothere")}, Options{}, "h", errdefs.ErrNotFound, "not found"},
		{"char device", []ent{dev("dev/mem", tar.TypeChar)}, Options{}, "dev/mem", ErrUnsafeEntry, "device node not allowed"},
		{"block device", []ent{dev("dev/sda", tar.TypeBlock)}, Options{}, "dev/sda", ErrUnsafeEntry, "device node not allowed"},
		{"trusted.overlay xattr", []ent{withXattr(file("f", "x"), "trusted.overlay.redirect", "/etc")}, Options{}, "f", ErrUnsafeEntry, "overlayfs metadata"},
		{"trusted.overlay xattr on whiteout", []ent{withXattr(file(".wh.f", ""), "trusted.overlay.opaque", "y")}, Options{}, ".wh.f", ErrUnsafeEntry, "overlayfs metadata"},
		{"user.overlay xattr", []ent{withXattr(dir("d/"), "user.overlay.opaque", "y")}, Options{}, "d/", ErrUnsafeEntry, "overlayfs metadata"},
		{"unknown type", []ent{{Header: tar.Header{Name: "x", Typeflag: 'Z', Mode: 0o644}}}, Options{}, "x", ErrUnsafeEntry, "unsupported entry type"},
		{"bare whiteout", []ent{file(".wh.", "")}, Options{}, ".wh.", ErrUnsafeEntry, "invalid whiteout"},
		{"dotdot whiteout", []ent{file("a/.wh...", "")}, Options{}, "a/.wh...", ErrUnsafeEntry, "invalid whiteout"},
		{"file as root", []ent{file(".", "")}, Options{}, ".", ErrUnsafeEntry, "layer root"},
		{"owner -1", []ent{{Header: tar.Header{Name: "f", Typeflag: tar.TypeReg, Uid: -1}}}, Options{}, "f", ErrUnsafeEntry, "out of range"},
		{"max entries", []ent{file("a", ""), file("b", ""), file("c", "")}, Options{MaxEntries: 2}, "c", ErrLimitExceeded, "more than 2 entries"},
		{"max entry size", []ent{big}, Options{MaxEntrySize: 1000}, "big", ErrLimitExceeded, "entry limit"},
		{"max total size", []ent{file("a", strings.Repeat("a", 600)), file("b", strings.Repeat("b", 600))}, Options{MaxTotalSize: 1000}, "b", ErrLimitExceeded, "total limit"},
		{"max header size", []ent{withXattr(file("f", ""), "user.big", strings.Repeat("v", 5000))}, Options{MaxHeaderSize: 4096}, "f", ErrLimitExceeded, "header of"},
		{"name too long", []ent{file(strings.Repeat("a/", 2100)+"f", "")}, Options{}, strings.Repeat("a/", 2100) + "f", ErrLimitExceeded, "longer than"},
		{"parent is a file", []ent{file("f", "x"), file("f/g", "y")}, Options{}, "f/g", unix.ENOTDIR, "not a directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSandbox(t)
			_, err := s.extract(t, buildTar(t, tc.ents...), tc.opts)
			s.checkContained(t)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			var ee *EntryError
			if !errors.As(err, &ee) || ee.Entry != tc.entry {
				t.Fatalf("error %v does not name entry %q", err, tc.entry)
			}
			prefix := fmt.Sprintf("layer entry %q: ", tc.entry)
			if errors.Is(err, ErrUnsafeEntry) {
				prefix = fmt.Sprintf("unsafe layer entry %q refused: ", tc.entry)
			}
			if !strings.Contains(err.Error(), tc.msg) || !strings.HasPrefix(err.Error(), prefix) {
				t.Errorf("message %q lacks %q", err, tc.msg)
			}
			if errors.Is(err, ErrUnsafeEntry) && !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("unsafe entry error does not wrap ErrInvalidArgument")
			}
		})
	}
}

func TestEntryErrorMessage(t *testing.T) {
	s := newSandbox(t)
	_, err := s.extract(t, buildTar(t, file("etc/../../x", "")), Options{})
	if got, want := fmt.Sprint(err), `unsafe layer entry "etc/../../x" refused: path escapes the layer root`; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}

func TestCleanName(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
		err  error
	}{
		{"a/b", []string{"a", "b"}, nil},
		{"./a//b/./", []string{"a", "b"}, nil},
		{"./", nil, nil},
		{".", nil, nil},
		{"", nil, ErrUnsafeEntry},
		{"a\x00b", nil, ErrUnsafeEntry},
		{"/a", nil, ErrUnsafeEntry},
		{"a/..", nil, ErrUnsafeEntry},
		{"..", nil, ErrUnsafeEntry},
		{"a/../../b", nil, ErrUnsafeEntry},
		{"..a/b..", []string{"..a", "b.."}, nil},
		{strings.Repeat("x", maxPathLen+1), nil, ErrLimitExceeded},
	} {
		t.Run(fmt.Sprintf("%q", tc.in), func(t *testing.T) {
			got, err := cleanName(tc.in)
			if !errors.Is(err, tc.err) || (tc.err == nil && err != nil) {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
			if strings.Join(got, "|") != strings.Join(tc.want, "|") {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// TestSymlinksStayInside checks that symlinks created by the layer are
// resolved as the container sees them, with the layer directory as root.
func TestSymlinksStayInside(t *testing.T) {
	t.Run("absolute target in a host directory", func(t *testing.T) {
		s := newSandbox(t)
		// A host directory reachable by the symlink's absolute target; a
		// broken implementation would write into it.
		host := filepath.Join(s.base, "host", "etc")
		if err := os.MkdirAll(host, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(host, "passwd"), []byte("host"), 0o644); err != nil {
			t.Fatal(err)
		}
		layer := buildTar(t, symlink("link", host), file("link/passwd", "layer"), file("link/new", "layer"))
		if _, err := s.extract(t, layer, Options{}); err != nil {
			t.Fatal(err)
		}
		s.checkContained(t, "host")
		if readFile(t, filepath.Join(host, "passwd")) != "host" || exists(filepath.Join(host, "new")) {
			t.Fatalf("host directory modified through a symlink")
		}
		inside := filepath.Join(s.root, host)
		if readFile(t, filepath.Join(inside, "passwd")) != "layer" || readFile(t, filepath.Join(inside, "new")) != "layer" {
			t.Fatalf("files not created under the root at %s", inside)
		}
		if st := lstat(t, filepath.Join(s.root, "link")); st.Mode&unix.S_IFMT != unix.S_IFLNK {
			t.Fatalf("link is no longer a symlink")
		}
	})
	t.Run("link to /etc", func(t *testing.T) {
		s := newSandbox(t)
		var before unix.Stat_t
		if err := unix.Stat("/etc", &before); err != nil {
			t.Fatal(err)
		}
		// passwd lands inside the root; a unique name proves nothing was
		// created in the host /etc without risking the real passwd.
		unique := fmt.Sprintf("cocoon-unpack-test-%d", time.Now().UnixNano())
		layer := buildTar(t, symlink("link", "/etc"), file("link/passwd", "layer"), file("link/"+unique, "layer"))
		if _, err := s.extract(t, layer, Options{}); err != nil {
			t.Fatal(err)
		}
		s.checkContained(t)
		if exists("/etc/" + unique) {
			os.Remove("/etc/" + unique)
			t.Fatalf("file created in the host /etc")
		}
		var after unix.Stat_t
		if err := unix.Stat("/etc", &after); err != nil {
			t.Fatal(err)
		}
		if after.Mtim != before.Mtim || after.Ctim != before.Ctim {
			t.Fatalf("host /etc changed during extraction")
		}
		if readFile(t, filepath.Join(s.root, "etc/passwd")) != "layer" || !exists(filepath.Join(s.root, "etc", unique)) {
			t.Fatalf("files not created under the root")
		}
	})
	t.Run("relative chain inside the root", func(t *testing.T) {
		s := newSandbox(t)
		layer := buildTar(t, dir("usr/lib/"), symlink("lib", "usr/lib"), symlink("usr/lib64", "../lib"), file("usr/lib64/libc.so", "c"))
		if _, err := s.extract(t, layer, Options{}); err != nil {
			t.Fatal(err)
		}
		s.checkContained(t)
		if readFile(t, filepath.Join(s.root, "usr/lib/libc.so")) != "c" {
			t.Fatal("file not written at the symlink-resolved path")
		}
	})
	t.Run("final symlink is replaced not followed", func(t *testing.T) {
		s := newSandbox(t)
		victim := filepath.Join(s.sentinel, "victim")
		layer := buildTar(t, symlink("f", victim), file("f", "layer"))
		if _, err := s.extract(t, layer, Options{}); err != nil {
			t.Fatal(err)
		}
		s.checkContained(t)
		if st := lstat(t, filepath.Join(s.root, "f")); st.Mode&unix.S_IFMT != unix.S_IFREG {
			t.Fatalf("f is not a regular file: %o", st.Mode)
		}
	})
	t.Run("symlink loop", func(t *testing.T) {
		s := newSandbox(t)
		_, err := s.extract(t, buildTar(t, symlink("a", "b"), symlink("b", "a"), file("a/x", "")), Options{})
		if !errors.Is(err, unix.ELOOP) {
			t.Fatalf("got %v, want ELOOP", err)
		}
		s.checkContained(t)
	})
}

func TestReplaceSemantics(t *testing.T) {
	s := newSandbox(t)
	d := dir("d/")
	d.Mode = 0o700
	layer := buildTar(t,
		dir("d/"), file("d/child", "c"),
		d, // directory over directory merges and takes the new metadata
		dir("e/"), file("e/child", "c"),
		file("e", "now a file"), // file over directory replaces it
		file("s", "x"), symlink("s", "target"),
		symlink("t", "d/child"), hardlink("t", "d/child"),
	)
	if _, err := s.extract(t, layer, Options{}); err != nil {
		t.Fatal(err)
	}
	s.checkContained(t)
	if readFile(t, filepath.Join(s.root, "d/child")) != "c" {
		t.Error("merged directory lost its child")
	}
	if st := lstat(t, filepath.Join(s.root, "d")); st.Mode != unix.S_IFDIR|0o700 {
		t.Errorf("d mode %o", st.Mode)
	}
	if readFile(t, filepath.Join(s.root, "e")) != "now a file" {
		t.Error("e not replaced by the file")
	}
	if target, err := os.Readlink(filepath.Join(s.root, "s")); err != nil || target != "target" {
		t.Errorf("s -> %q, %v", target, err)
	}
	if lstat(t, filepath.Join(s.root, "t")).Ino != lstat(t, filepath.Join(s.root, "d/child")).Ino {
		t.Error("t is not a hardlink of d/child")
	}
}

func TestHardlinkCopyUp(t *testing.T) {
	s := newSandbox(t)
	lower1 := filepath.Join(s.base, "lower1") // top
	lower2 := filepath.Join(s.base, "lower2")
	mk := func(root, name, body string, mode os.FileMode, uid, gid int) string {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(p, uid, gid); err != nil {
			t.Fatal(err)
		}
		return p
	}
	src := mk(lower2, "usr/share/data", "from lower2", 0o640, 42, 43)
	if err := unix.Lsetxattr(src, "user.origin", []byte("lower2"), 0); err != nil {
		t.Fatal(err)
	}
	mtime := time.Unix(1400000000, 0)
	if err := os.Chtimes(src, mtime, mtime); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(lower2, "usr/share"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(filepath.Join(lower2, "usr/share"), 5, 6); err != nil {
		t.Fatal(err)
	}
	mk(lower1, "shadowed", "from lower1", 0o600, 0, 0)
	mk(lower2, "shadowed", "from lower2", 0o600, 0, 0)
	// A whiteout in the top lower layer hides the lower2 file.
	if err := unix.Mknod(filepath.Join(lower1, "gone"), unix.S_IFCHR, 0); err != nil {
		t.Fatal(err)
	}
	mk(lower2, "gone", "deleted", 0o600, 0, 0)
	// A lower symlink on the target's path resolves within that layer.
	if err := os.Symlink("/usr/share", filepath.Join(lower2, "share")); err != nil {
		t.Fatal(err)
	}

	layer := buildTar(t,
		hardlink("usr/share/link", "usr/share/data"),
		hardlink("top", "shadowed"),
		hardlink("via", "share/data"),
	)
	if _, err := s.extract(t, layer, Options{Parents: []string{lower1, lower2}}); err != nil {
		t.Fatal(err)
	}
	s.checkContained(t, "lower1", "lower2")
	up := filepath.Join(s.root, "usr/share/data")
	st := lstat(t, up)
	if st.Mode != unix.S_IFREG|0o640 || st.Uid != 42 || st.Gid != 43 || st.Nlink != 3 {
		t.Errorf("copied-up file mode %o owner %d:%d nlink %d", st.Mode, st.Uid, st.Gid, st.Nlink)
	}
	if got := time.Unix(st.Mtim.Unix()); !got.Equal(mtime) {
		t.Errorf("copied-up mtime %v", got)
	}
	if v, ok := getxattr(t, up, "user.origin"); !ok || v != "lower2" {
		t.Errorf("copied-up xattr %q %v", v, ok)
	}
	if readFile(t, filepath.Join(s.root, "usr/share/link")) != "from lower2" || lstat(t, filepath.Join(s.root, "via")).Ino != st.Ino {
		t.Errorf("links do not share the copied-up inode")
	}
	// The implicitly created parent takes the lower directory's attributes.
	if ds := lstat(t, filepath.Join(s.root, "usr/share")); ds.Mode != unix.S_IFDIR|0o750 || ds.Uid != 5 || ds.Gid != 6 {
		t.Errorf("usr/share mode %o owner %d:%d", ds.Mode, ds.Uid, ds.Gid)
	}
	if readFile(t, filepath.Join(s.root, "top")) != "from lower1" {
		t.Errorf("copy-up did not take the top-most lower layer")
	}
	if readFile(t, filepath.Join(lower2, "usr/share/data")) != "from lower2" || lstat(t, src).Nlink != 1 {
		t.Errorf("lower layer modified")
	}

	s2 := newSandbox(t)
	_, err := s2.extract(t, buildTar(t, hardlink("h", "gone")), Options{Parents: []string{lower1, lower2}})
	if !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("hardlink to a whited-out lower file: got %v, want ErrNotFound", err)
	}
}

func TestDevicesAllowed(t *testing.T) {
	s := newSandbox(t)
	layer := buildTar(t,
		ent{Header: tar.Header{Name: "dev/null", Typeflag: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 3}},
		ent{Header: tar.Header{Name: "dev/loop9", Typeflag: tar.TypeBlock, Mode: 0o660, Devmajor: 7, Devminor: 9, Gid: 6}},
	)
	if _, err := s.extract(t, layer, Options{AllowDevices: true}); err != nil {
		t.Fatal(err)
	}
	if st := lstat(t, filepath.Join(s.root, "dev/null")); st.Mode != unix.S_IFCHR|0o666 || st.Rdev != unix.Mkdev(1, 3) {
		t.Errorf("dev/null mode %o rdev %x", st.Mode, st.Rdev)
	}
	if st := lstat(t, filepath.Join(s.root, "dev/loop9")); st.Mode != unix.S_IFBLK|0o660 || st.Rdev != unix.Mkdev(7, 9) || st.Gid != 6 {
		t.Errorf("dev/loop9 mode %o rdev %x gid %d", st.Mode, st.Rdev, st.Gid)
	}
}

func TestExtractErrors(t *testing.T) {
	t.Run("not empty", func(t *testing.T) {
		s := newSandbox(t)
		if err := os.WriteFile(filepath.Join(s.root, "x"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := s.extract(t, buildTar(t, file("a", "")), Options{}); !errors.Is(err, errdefs.ErrFailedPrecondition) {
			t.Fatalf("got %v, want ErrFailedPrecondition", err)
		}
	})
	t.Run("missing dir", func(t *testing.T) {
		if _, err := Extract(context.Background(), bytes.NewReader(nil), filepath.Join(t.TempDir(), "nope"), Options{}); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("truncated", func(t *testing.T) {
		s := newSandbox(t)
		data := buildTar(t, file("a", strings.Repeat("a", 5000)))
		_, err := s.extract(t, data[:2048], Options{})
		var ee *EntryError
		if !errors.As(err, &ee) || ee.Entry != "a" || !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("got %v, want an unexpected EOF naming entry a", err)
		}
	})
	t.Run("garbage", func(t *testing.T) {
		s := newSandbox(t)
		if _, err := s.extract(t, bytes.Repeat([]byte{0xa5}, 4096), Options{}); err == nil {
			t.Fatal("garbage accepted")
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		s := newSandbox(t)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := Extract(ctx, bytes.NewReader(buildTar(t, file("a", "a"))), s.root, Options{})
		if !errors.Is(err, context.Canceled) || exists(filepath.Join(s.root, "a")) {
			t.Fatalf("got %v, want context.Canceled before any entry", err)
		}
	})
	t.Run("empty layer", func(t *testing.T) {
		s := newSandbox(t)
		stats, err := s.extract(t, buildTar(t), Options{})
		if err != nil || stats != (Stats{}) {
			t.Fatalf("got %+v, %v", stats, err)
		}
	})
}
