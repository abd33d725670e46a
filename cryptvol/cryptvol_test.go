package cryptvol

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/cocoon-cc/cocoon/cryptvol/luks2"
)

var marker = []byte("COCOON-PLAINTEXT-MARKER-7f3a9c")

// writeMarkedFile writes size bytes of random data with the marker every
// 64 KiB and returns its SHA-256.
func writeMarkedFile(t *testing.T, path string, size int) [32]byte {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	chunk := make([]byte, 1<<20)
	for done := 0; done < size; done += len(chunk) {
		rand.Read(chunk)
		for i := 0; i+len(marker) <= len(chunk); i += 64 << 10 {
			copy(chunk[i:], marker)
		}
		n := min(len(chunk), size-done)
		if _, err := f.Write(chunk[:n]); err != nil {
			t.Fatal(err)
		}
		h.Write(chunk[:n])
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum
}

func hashFile(t *testing.T, path string) [32]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum
}

func sparseFile(t testing.TB, path string, size int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

var fastKDF = fastKDFWith(luks2.MinPBKDF2Iterations)

func fastKDFWith(iter int) luks2.KDFParams { return luks2.KDFParams{Type: "pbkdf2", Iterations: iter} }

// TestPersistentLifecycle: format, open (mkfs), write 100 MB, close,
// reopen, verify, destroy; the backing never holds the plaintext marker.
func TestPersistentLifecycle(t *testing.T) {
	requireRoot(t)
	for _, tc := range []struct {
		name     string
		detached bool
	}{{"detached-header", true}, {"header-in-place", false}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t)
			dir := t.TempDir()
			rt := filepath.Join(dir, "run")
			dev := filepath.Join(dir, "data.img")
			sparseFile(t, dev, 256<<20)
			hdr := ""
			if tc.detached {
				hdr = filepath.Join(dir, "header")
			}
			pass := []byte("correct horse battery staple")
			if err := Format(ctx, FormatOptions{Header: hdr, Device: dev, Passphrase: pass, KDF: fastKDF}); err != nil {
				t.Fatal(err)
			}
			mnt := filepath.Join(dir, "mnt")
			open := func() *Volume {
				v, err := Open(ctx, OpenOptions{Header: hdr, Device: dev, Passphrase: pass, MountDir: mnt, Mkfs: true, Engine: EngineUserspace, RuntimeDir: rt})
				if err != nil {
					t.Fatal(err)
				}
				if v.Engine() != EngineUserspace {
					t.Fatalf("engine %q", v.Engine())
				}
				return v
			}
			var v *Volume
			volumeCleanup(t, &v)
			v = open()
			want := writeMarkedFile(t, filepath.Join(mnt, "big"), 100<<20)
			if err := v.Close(ctx); err != nil {
				t.Fatal(err)
			}
			v = nil
			assertNothingLeft(t, mnt, rt)

			v = open()
			if got := hashFile(t, filepath.Join(mnt, "big")); got != want {
				t.Fatal("data read after reopening differs from what was written")
			}
			if err := v.Destroy(ctx); err != nil {
				t.Fatal(err)
			}
			v = nil
			assertNothingLeft(t, mnt, rt)
			if fileContains(t, dev, marker) {
				t.Fatal("backing file contains the plaintext marker")
			}
			hdrPath := dev
			if tc.detached {
				if _, err := os.Stat(hdr); !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("detached header not removed by destroy: %v", err)
				}
			} else {
				f, _ := os.Open(hdrPath)
				_, err := luks2.Parse(f)
				f.Close()
				if !errors.Is(err, luks2.ErrInvalidHeader) {
					t.Fatalf("header still parses after destroy: %v", err)
				}
			}
		})
	}
}

func TestEphemeralVolume(t *testing.T) {
	requireRoot(t)
	ctx := testCtx(t)
	dir := t.TempDir()
	rt := filepath.Join(dir, "run")
	backing := filepath.Join(dir, "scratch.img")
	mnt := filepath.Join(dir, "mnt")
	var v *Volume
	volumeCleanup(t, &v)
	v, err := CreateEphemeral(ctx, EphemeralOptions{Backing: backing, Size: 64 << 20, MountDir: mnt, Engine: EngineUserspace, RuntimeDir: rt})
	if err != nil {
		t.Fatal(err)
	}
	want := writeMarkedFile(t, filepath.Join(mnt, "f"), 8<<20)
	if got := hashFile(t, filepath.Join(mnt, "f")); got != want {
		t.Fatal("read back differs")
	}
	if info := v.Info(); !info.Ephemeral || info.BlockDevice == "" || info.EngineMount == "" {
		t.Fatalf("info %+v", info)
	}
	// Force the data out of the page cache onto the backing file.
	if err := v.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if fileContains(t, backing, marker) {
		t.Fatal("backing file contains the plaintext marker")
	}
	if err := v.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	v = nil
	if _, err := os.Stat(backing); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("backing file survived destroy: %v", err)
	}
	assertNothingLeft(t, mnt, rt)
}

// TestOpenFailures: wrong passphrase and corrupt headers fail clearly and
// leave nothing mounted or attached; a damaged primary copy alone is
// survivable.
func TestOpenFailures(t *testing.T) {
	requireRoot(t)
	ctx := testCtx(t)
	dir := t.TempDir()
	dev := filepath.Join(dir, "data.img")
	sparseFile(t, dev, 32<<20)
	hdr := filepath.Join(dir, "header")
	pass := []byte("right")
	if err := Format(ctx, FormatOptions{Header: hdr, Device: dev, Passphrase: pass, KDF: fastKDF}); err != nil {
		t.Fatal(err)
	}
	good, err := os.ReadFile(hdr)
	if err != nil {
		t.Fatal(err)
	}
	corrupt := func(offsets ...int) []byte {
		b := bytes.Clone(good)
		for _, o := range offsets {
			b[o] ^= 0xff
		}
		return b
	}
	hs := luks2.DefaultHeaderSize
	for _, tc := range []struct {
		name    string
		header  []byte
		pass    string
		wantErr error
	}{
		{"wrong passphrase", good, "wrong", ErrWrongPassphrase},
		{"both copies corrupt", corrupt(4096+10, hs+4096+10), "right", ErrInvalidHeader},
		{"bad magic both", corrupt(0, hs), "right", ErrInvalidHeader},
		{"keyslot material corrupt", corrupt(2*hs + 100), "right", ErrWrongPassphrase},
		{"primary corrupt only", corrupt(4096 + 10), "right", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := filepath.Join(dir, "h-test")
			if err := os.WriteFile(h, tc.header, 0o600); err != nil {
				t.Fatal(err)
			}
			rt := filepath.Join(dir, "run")
			mnt := filepath.Join(dir, "mnt")
			var v *Volume
			volumeCleanup(t, &v)
			v, err := Open(ctx, OpenOptions{Header: h, Device: dev, Passphrase: []byte(tc.pass), MountDir: mnt, Mkfs: true, Engine: EngineUserspace, RuntimeDir: rt})
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("open with intact secondary header: %v", err)
				}
				if err := v.Close(ctx); err != nil {
					t.Fatal(err)
				}
				v = nil
			} else if !errors.Is(err, tc.wantErr) {
				t.Fatalf("error %v, want %v", err, tc.wantErr)
			} else {
				t.Logf("error as reported: %v", err)
			}
			assertNothingLeft(t, mnt, rt)
		})
	}
}

func TestEmptyDir(t *testing.T) {
	requireRoot(t)
	for _, tc := range []struct {
		name   string
		medium string
		fstype string
	}{{"memory", MediumMemory, "tmpfs"}, {"encrypted", MediumDefault, "ext4"}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t)
			dir := t.TempDir()
			rt := filepath.Join(dir, "run")
			ed := filepath.Join(dir, "pod", "vol")
			var v *Volume
			volumeCleanup(t, &v)
			v, err := NewEmptyDir(ctx, EmptyDirOptions{Dir: ed, SizeLimit: 32 << 20, Medium: tc.medium, BackingDir: filepath.Join(dir, "backing"), Engine: EngineUserspace, RuntimeDir: rt})
			if err != nil {
				t.Fatal(err)
			}
			var st unixStatfs
			if err := statfs(ed, &st); err != nil {
				t.Fatal(err)
			}
			if got := fsName(st); got != tc.fstype {
				t.Fatalf("emptyDir is %s, want %s", got, tc.fstype)
			}
			total := int64(st.Blocks) * st.Bsize
			if total > 32<<20 || total < 16<<20 {
				t.Fatalf("emptyDir size %d does not honour sizeLimit 32 MiB", total)
			}
			// Writing beyond the limit fails with ENOSPC.
			big := make([]byte, 40<<20)
			err = os.WriteFile(filepath.Join(ed, "big"), big, 0o644)
			if err == nil {
				t.Fatal("wrote 40 MiB into a 32 MiB emptyDir")
			}
			fi, err := os.Stat(ed)
			if err != nil || fi.Mode().Perm() != 0o777 {
				t.Fatalf("emptyDir mode %v, %v", fi.Mode(), err)
			}
			if err := v.Destroy(ctx); err != nil {
				t.Fatal(err)
			}
			v = nil
			if _, err := os.Stat(ed); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("emptyDir survived teardown: %v", err)
			}
			if entries, _ := os.ReadDir(filepath.Join(dir, "backing")); len(entries) != 0 {
				t.Fatalf("backing files survived teardown: %v", entries)
			}
			assertNothingLeft(t, ed, rt)
		})
	}
	t.Run("bad medium", func(t *testing.T) {
		_, err := NewEmptyDir(testCtx(t), EmptyDirOptions{Dir: t.TempDir(), Medium: "HugePages"})
		if err == nil {
			t.Fatal("accepted an unknown medium")
		}
	})
}
