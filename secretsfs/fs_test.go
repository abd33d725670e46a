package secretsfs_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cocoon-cc/cocoon/attest/kbs/server"
	"github.com/cocoon-cc/cocoon/secretsfs"
	"github.com/cocoon-cc/cocoon/secretsfs/internal/devkbs"
	"github.com/cocoon-cc/cocoon/secretsfs/sealed"
)

const (
	testUID = 1234
	testGID = 5678
	testTTL = time.Minute
	kid     = "kbs:///default/signing-key/sealed-secret"
)

// eventually retries f until it passes or 5 s elapse: the kernel may keep
// a name or attributes for up to the 1 s entry/attribute timeout.
func eventually(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func wantErrno(t *testing.T, err error, want syscall.Errno) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("err = %v, want %v", err, want)
	}
}

func readAs(path string, uid, gid uint32) ([]byte, error) {
	cmd := exec.Command("/bin/cat", path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
	return cmd.CombinedOutput()
}

// TestSecretsFS mounts the filesystem over a real development KBS (sample
// attester, allow-all policy) and exercises every kind of file it serves,
// then checks that no plaintext reached the logs or any file on disk.
func TestSecretsFS(t *testing.T) {
	requireFUSE(t)
	ctx, logs := captureLogs(t)
	k := devkbs.Start(t, server.AllowAllPolicy)
	signer, jwk := newSigner(t)
	forger, _ := newSigner(t)
	k.Put(t, "default/signing-key/sealed-secret", jwk)

	vaultPT := marker(t, "vault")
	vaultPT2 := marker(t, "vault-rotated")
	nestedPT := marker(t, "nested")
	k8sPT := marker(t, "k8s")
	resourcePT := marker(t, "resource")
	resourcePT2 := marker(t, "resource-rotated-and-longer")
	envKBSPT := marker(t, "envelope-kbs")
	envLocalPT := marker(t, "envelope-local")
	addedPT := marker(t, "added")
	changedPT := marker(t, "changed")
	k.Put(t, "default/sealed-secret/vault", vaultPT)
	k.Put(t, "default/sealed-secret/nested", nestedPT)
	k.Put(t, "default/sealed-secret/k8s", k8sPT)
	k.Put(t, "default/sealed-secret/added", addedPT)
	k.Put(t, "default/sealed-secret/changed", changedPT)
	k.Put(t, "default/key/1", resourcePT)

	kek := make([]byte, sealed.KeySize)
	if _, err := rand.Read(kek); err != nil {
		t.Fatal(err)
	}
	k.Put(t, "default/kek/1", kek)
	localKeys := t.TempDir()
	writeFile(t, filepath.Join(localKeys, "kek-local"), kek)
	envKBS, err := sealed.SealEnvelope(envKBSPT, kek, sealed.ProviderKBS, "kbs:///default/kek/1")
	if err != nil {
		t.Fatal(err)
	}
	envLocal, err := sealed.SealEnvelope(envLocalPT, kek, sealed.ProviderLocal, "kek-local")
	if err != nil {
		t.Fatal(err)
	}

	src := t.TempDir()
	plain := []byte("not sealed: passes through\n")
	writeFile(t, filepath.Join(src, "plain.txt"), plain)
	writeFile(t, filepath.Join(src, "vault"), append(sign(t, vault("kbs:///default/sealed-secret/vault"), signer, kid), '\n'))
	writeFile(t, filepath.Join(src, "envelope-kbs"), sign(t, &sealed.Secret{Version: sealed.Version, Envelope: envKBS}, signer, kid))
	writeFile(t, filepath.Join(src, "envelope-local"), sign(t, &sealed.Secret{Version: sealed.Version, Envelope: envLocal}, signer, kid))
	writeFile(t, filepath.Join(src, "forged"), sign(t, vault("kbs:///default/sealed-secret/vault"), forger, kid))
	writeFile(t, filepath.Join(src, "unknown-kid"), sign(t, vault("kbs:///default/sealed-secret/vault"), signer, "kbs:///default/signing-key/missing"))
	writeFile(t, filepath.Join(src, "dir", "nested"), sign(t, vault("kbs:///default/sealed-secret/nested"), signer, kid))
	// A Kubernetes secret volume: key -> ..data/key, ..data -> ..<timestamp>.
	writeFile(t, filepath.Join(src, "..2026_11_27_07_00_00.1", "token"), sign(t, vault("kbs:///default/sealed-secret/k8s"), signer, kid))
	if err := os.Symlink("..2026_11_27_07_00_00.1", filepath.Join(src, "..data")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("..data/token", filepath.Join(src, "token")); err != nil {
		t.Fatal(err)
	}
	// Pass-through files too big to be sealed secrets are served from the
	// source file; a too-big "sealed" file is refused.
	big := make([]byte, sealed.MaxSize+10)
	if _, err := rand.Read(big); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(src, "big.bin"), big)
	writeFile(t, filepath.Join(src, "big-sealed"), append([]byte(sealed.Prefix), big...))
	if err := os.Symlink("/etc/passwd", filepath.Join(src, "escape")); err != nil {
		t.Fatal(err)
	}

	mnt := t.TempDir()
	// Let other users reach the mount point (t.TempDir parents are 0700).
	if err := os.Chmod(filepath.Dir(mnt), 0o755); err != nil {
		t.Fatal(err)
	}
	clk := &clock{}
	client := &countingGetter{g: k.Client(t)}
	unsealer := &sealed.Unsealer{
		Resources: client,
		Providers: map[string]sealed.EnvelopeProvider{
			sealed.ProviderKBS:   &sealed.KBSProvider{Resources: client},
			sealed.ProviderLocal: &sealed.LocalProvider{Dir: localKeys},
		},
	}
	fsys := mount(t, ctx, secretsfs.Options{
		Dir:       mnt,
		Sources:   map[string]string{"app": src},
		Unsealer:  unsealer,
		Resources: client,
		UID:       testUID,
		GID:       testGID,
		TTL:       testTTL,
		Now:       clk.Now,
	})
	app := filepath.Join(mnt, "app")

	t.Run("root lists sources and kbs", func(t *testing.T) {
		ents, err := os.ReadDir(mnt)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		if strings.Join(names, ",") != "app,kbs" {
			t.Fatalf("root entries %q", names)
		}
	})

	t.Run("mirror", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			want []byte
		}{
			{"plain.txt", plain},
			{"big.bin", big},
			{"vault", vaultPT},
			{"envelope-kbs", envKBSPT},
			{"envelope-local", envLocalPT},
			{"dir/nested", nestedPT},
			{"token", k8sPT},
			{"..data/token", k8sPT},
		} {
			t.Run(tc.name, func(t *testing.T) {
				got, err := os.ReadFile(filepath.Join(app, tc.name))
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, tc.want) {
					t.Fatalf("read %d bytes, not the %d expected", len(got), len(tc.want))
				}
				fi, err := os.Stat(filepath.Join(app, tc.name))
				if err != nil {
					t.Fatal(err)
				}
				if fi.Size() != int64(len(tc.want)) {
					t.Fatalf("size %d, want %d", fi.Size(), len(tc.want))
				}
			})
		}
		ents, err := os.ReadDir(app)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		sort.Strings(names)
		want := []string{"..2026_11_27_07_00_00.1", "..data", "big-sealed", "big.bin", "dir", "envelope-kbs", "envelope-local", "forged", "plain.txt", "token", "unknown-kid", "vault"}
		if strings.Join(names, ",") != strings.Join(want, ",") {
			t.Fatalf("entries %q, want %q (symlinks leaving the source are not mirrored)", names, want)
		}
		if _, err := os.Stat(filepath.Join(app, "escape")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("symlink leaving the source: %v", err)
		}
	})

	t.Run("refused secrets are EIO and logged", func(t *testing.T) {
		for _, tc := range []struct{ name, logged string }{
			{"forged", "sealed secret signature"},
			{"unknown-kid", "sealed secret kid fetch: kid kbs:///default/signing-key/missing"},
			{"big-sealed", "sealed secret larger than"},
		} {
			_, err := os.ReadFile(filepath.Join(app, tc.name))
			wantErrno(t, err, syscall.EIO)
			if !bytes.Contains(logs.Bytes(), []byte(tc.logged)) {
				t.Fatalf("log does not say %q", tc.logged)
			}
		}
	})

	t.Run("modes and owner", func(t *testing.T) {
		for _, tc := range []struct {
			path string
			mode os.FileMode
		}{
			{mnt, os.ModeDir | 0o500},
			{app, os.ModeDir | 0o500},
			{filepath.Join(app, "dir"), os.ModeDir | 0o500},
			{filepath.Join(app, "vault"), 0o400},
			{filepath.Join(app, "plain.txt"), 0o400},
			{filepath.Join(mnt, "kbs", "default", "key"), os.ModeDir | 0o500},
			{filepath.Join(mnt, "kbs", "default", "key", "1"), 0o400},
		} {
			fi, err := os.Stat(tc.path)
			if err != nil {
				t.Fatal(err)
			}
			st := fi.Sys().(*syscall.Stat_t)
			if fi.Mode() != tc.mode || st.Uid != testUID || st.Gid != testGID {
				t.Fatalf("%s: mode %v uid %d gid %d, want %v %d %d", tc.path, fi.Mode(), st.Uid, st.Gid, tc.mode, testUID, testGID)
			}
		}
		// The kernel enforces the modes (default_permissions).
		out, err := readAs(filepath.Join(app, "vault"), testUID, testGID)
		if err != nil || !bytes.Equal(out, vaultPT) {
			t.Fatalf("owner read: %v", err)
		}
		if out, err := readAs(filepath.Join(app, "vault"), 4321, 4321); err == nil || !bytes.Contains(out, []byte("Permission denied")) {
			t.Fatalf("other user read: err %v, output %q", err, bytes.ReplaceAll(out, vaultPT, []byte("<secret>")))
		}
	})

	t.Run("read-only", func(t *testing.T) {
		wantErrno(t, os.WriteFile(filepath.Join(app, "vault"), []byte("x"), 0o600), syscall.EROFS)
		wantErrno(t, os.WriteFile(filepath.Join(app, "new"), []byte("x"), 0o600), syscall.EROFS)
		wantErrno(t, os.Remove(filepath.Join(app, "plain.txt")), syscall.EROFS)
		wantErrno(t, os.Mkdir(filepath.Join(app, "newdir"), 0o700), syscall.EROFS)
	})

	t.Run("live source changes", func(t *testing.T) {
		added := filepath.Join(src, "added")
		writeFile(t, added, sign(t, vault("kbs:///default/sealed-secret/added"), signer, kid))
		eventually(t, "added file", func() error {
			got, err := os.ReadFile(filepath.Join(app, "added"))
			if err == nil && !bytes.Equal(got, addedPT) {
				err = errors.New("wrong content")
			}
			return err
		})
		writeFile(t, added, sign(t, vault("kbs:///default/sealed-secret/changed"), signer, kid))
		eventually(t, "changed file", func() error {
			got, err := os.ReadFile(filepath.Join(app, "added"))
			if err == nil && !bytes.Equal(got, changedPT) {
				err = errors.New("still the old value")
			}
			return err
		})
		writeFile(t, added, []byte("now plain"))
		eventually(t, "sealed to plain", func() error {
			got, err := os.ReadFile(filepath.Join(app, "added"))
			if err == nil && string(got) != "now plain" {
				err = errors.New("still sealed value")
			}
			return err
		})
		if err := os.Remove(added); err != nil {
			t.Fatal(err)
		}
		eventually(t, "removed file", func() error {
			_, err := os.Stat(filepath.Join(app, "added"))
			if !errors.Is(err, os.ErrNotExist) {
				return errors.New("still present")
			}
			return nil
		})
	})

	t.Run("kbs paths", func(t *testing.T) {
		got, err := os.ReadFile(filepath.Join(mnt, "kbs", "default", "key", "1"))
		if err != nil || !bytes.Equal(got, resourcePT) {
			t.Fatalf("read resource: %v", err)
		}
		ents, err := os.ReadDir(filepath.Join(mnt, "kbs"))
		if err != nil || len(ents) != 0 {
			t.Fatalf("kbs listing %v, %v", ents, err)
		}
		_, err = os.ReadFile(filepath.Join(mnt, "kbs", "default", "key", "missing"))
		wantErrno(t, err, syscall.EIO)
		_, err = os.ReadFile(filepath.Join(mnt, "kbs", "default", "key", "1", "deeper"))
		wantErrno(t, err, syscall.ENOTDIR)
		_, err = os.ReadFile(filepath.Join(mnt, "kbs", "default", "k ey", "1"))
		wantErrno(t, err, syscall.ENOENT)
	})

	t.Run("TTL refresh", func(t *testing.T) {
		k.Put(t, "default/sealed-secret/vault", vaultPT2)
		k.Put(t, "default/key/1", resourcePT2)
		for p, want := range map[string][]byte{filepath.Join(app, "vault"): vaultPT, filepath.Join(mnt, "kbs", "default", "key", "1"): resourcePT} {
			got, err := os.ReadFile(p)
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("%s before the TTL: %v (cached value not served)", p, err)
			}
		}
		clk.Advance(testTTL + time.Second)
		before := client.count("kbs:///default/key/1")
		// Concurrent readers after expiry share one fetch.
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for range 8 {
			wg.Go(func() {
				got, err := os.ReadFile(filepath.Join(mnt, "kbs", "default", "key", "1"))
				if err == nil && !bytes.Equal(got, resourcePT2) {
					err = errors.New("old value after the TTL")
				}
				errs <- err
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		if n := client.count("kbs:///default/key/1") - before; n != 1 {
			t.Fatalf("%d fetches of the expired resource, want 1", n)
		}
		got, err := os.ReadFile(filepath.Join(app, "vault"))
		if err != nil || !bytes.Equal(got, vaultPT2) {
			t.Fatalf("sealed file after the TTL: %v, got %d bytes want %d", err, len(got), len(vaultPT2))
		}
	})

	if err := fsys.Unmount(); err != nil {
		t.Fatal(err)
	}
	plaintexts := [][]byte{vaultPT, vaultPT2, nestedPT, k8sPT, resourcePT, resourcePT2, envKBSPT, envLocalPT, addedPT, changedPT}
	if l := logs.Bytes(); len(l) == 0 {
		t.Fatal("no logs captured")
	} else {
		for _, p := range plaintexts {
			if bytes.Contains(l, p) {
				t.Errorf("plaintext %q in the logs", p)
			}
		}
	}
	// The mount point (now unmounted), the sources and the local keys hold
	// no plaintext; the KBS repository holds the vault values by design,
	// but never an envelope's plaintext.
	for _, d := range []string{mnt, src, localKeys} {
		assertNotUnder(t, d, plaintexts...)
	}
	assertNotUnder(t, k.Dir, envKBSPT, envLocalPT)
}

// TestPolicyDenied: with Trustee's default policy the sample TEE is
// denied; reads are EACCES, and the denial is logged.
func TestPolicyDenied(t *testing.T) {
	requireFUSE(t)
	ctx, logs := captureLogs(t)
	k := devkbs.Start(t, server.DefaultPolicy)
	signer, jwk := newSigner(t)
	k.Put(t, "default/signing-key/sealed-secret", jwk)
	pt := marker(t, "denied")
	k.Put(t, "default/sealed-secret/x", pt)
	k.Put(t, "default/key/1", pt)
	src := t.TempDir()
	writeFile(t, filepath.Join(src, "x"), sign(t, vault("kbs:///default/sealed-secret/x"), signer, kid))
	client := k.Client(t)
	mnt := t.TempDir()
	mount(t, ctx, secretsfs.Options{Dir: mnt, Sources: map[string]string{"s": src}, Unsealer: &sealed.Unsealer{Resources: client}, Resources: client})
	for _, p := range []string{filepath.Join(mnt, "s", "x"), filepath.Join(mnt, "kbs", "default", "key", "1")} {
		_, err := os.ReadFile(p)
		wantErrno(t, err, syscall.EACCES)
	}
	if !bytes.Contains(logs.Bytes(), []byte("PolicyDeny")) {
		t.Fatal("denial not logged")
	}
	if bytes.Contains(logs.Bytes(), pt) {
		t.Fatal("plaintext in logs")
	}
}

func TestMountOptionsRejected(t *testing.T) {
	src := t.TempDir()
	k := devkbs.Start(t, server.AllowAllPolicy)
	ctx, _ := captureLogs(t)
	for _, tc := range []struct {
		name string
		opts secretsfs.Options
	}{
		{"no dir", secretsfs.Options{}},
		{"negative TTL", secretsfs.Options{Dir: t.TempDir(), TTL: -time.Second}},
		{"name with slash", secretsfs.Options{Dir: t.TempDir(), Sources: map[string]string{"a/b": src}}},
		{"dot dot", secretsfs.Options{Dir: t.TempDir(), Sources: map[string]string{"..": src}}},
		{"kbs reserved", secretsfs.Options{Dir: t.TempDir(), Sources: map[string]string{"kbs": src}, Resources: k.Client(t)}},
		{"missing source", secretsfs.Options{Dir: t.TempDir(), Sources: map[string]string{"a": filepath.Join(src, "none")}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := secretsfs.Mount(ctx, tc.opts)
			if err == nil {
				_ = f.Unmount()
				t.Fatal("accepted")
			}
		})
	}
}

func TestParseSources(t *testing.T) {
	for _, tc := range []struct {
		name  string
		specs []string
		want  map[string]string
	}{
		{"two", []string{"app=/run/secrets/app", "db=/x=y"}, map[string]string{"app": "/run/secrets/app", "db": "/x=y"}},
		{"none", nil, map[string]string{}},
		{"no equals", []string{"app"}, nil},
		{"empty dir", []string{"app="}, nil},
		{"empty name", []string{"=/x"}, nil},
		{"slash in name", []string{"a/b=/x"}, nil},
		{"dot dot", []string{"..=/x"}, nil},
		{"duplicate", []string{"a=/x", "a=/y"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := secretsfs.ParseSources(tc.specs)
			if tc.want == nil {
				if err == nil {
					t.Fatalf("accepted %q", tc.specs)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %v", got)
			}
			for k, v := range tc.want {
				if got[k] != v {
					t.Fatalf("got %v, want %v", got, tc.want)
				}
			}
		})
	}
}

// TestListingNeverUnseals: ls -l (readdir, then a stat of every entry)
// contacts the KBS for no file, sealed or not, and neither does a stat of
// a KBS resource; a sealed file and a resource are listed with the bound
// of their size until read. Reading then unseals (or fetches) once and
// returns the whole value, through read(2) and through sendfile(2) (as
// busybox cat reads), and a stat afterwards reports the exact size.
func TestListingNeverUnseals(t *testing.T) {
	requireFUSE(t)
	const listedBound = 64 << 20 // secretsfs's bound on a value's size
	ctx, _ := captureLogs(t)
	k := devkbs.Start(t, server.AllowAllPolicy)
	signer, jwk := newSigner(t)
	k.Put(t, "default/signing-key/sealed-secret", jwk)
	pts := map[string][]byte{}
	src := t.TempDir()
	for _, name := range []string{"a", "b", "c"} {
		// Longer than a page, so a reader stopping early would show.
		pts[name] = append(marker(t, name), bytes.Repeat([]byte{'x'}, 6000)...)
		k.Put(t, "default/sealed-secret/"+name, pts[name])
		writeFile(t, filepath.Join(src, name), append(sign(t, vault("kbs:///default/sealed-secret/"+name), signer, kid), '\n'))
	}
	writeFile(t, filepath.Join(src, "plain"), []byte("plain text"))
	resourcePT := marker(t, "resource")
	k.Put(t, "default/key/1", resourcePT)
	client := &countingGetter{g: k.Client(t)}
	mnt := t.TempDir()
	mount(t, ctx, secretsfs.Options{
		Dir:       mnt,
		Sources:   map[string]string{"app": src},
		Unsealer:  &sealed.Unsealer{Resources: client},
		Resources: client,
	})
	app := filepath.Join(mnt, "app")
	resource := filepath.Join(mnt, "kbs", "default", "key", "1")
	fetches := func() int {
		n := client.count(kid) + client.count("kbs:///default/key/1")
		for name := range pts {
			n += client.count("kbs:///default/sealed-secret/" + name)
		}
		return n
	}

	out, err := exec.Command("ls", "-l", app).CombinedOutput()
	if err != nil {
		t.Fatalf("ls -l: %v: %s", err, out)
	}
	for _, p := range []string{filepath.Join(app, "a"), filepath.Join(app, "b"), filepath.Join(app, "c"), resource} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); fi.Size() != listedBound || st.Blocks != 0 {
			t.Errorf("%s: listed size %d, %d blocks before any read, want %d and 0", p, fi.Size(), st.Blocks, listedBound)
		}
	}
	if fi, err := os.Stat(filepath.Join(app, "plain")); err != nil || fi.Size() != int64(len("plain text")) {
		t.Errorf("plain: %v (want its own size)", err)
	}
	if n := fetches(); n != 0 {
		t.Fatalf("listing and stat made %d KBS fetches, want 0", n)
	}

	out, err = exec.Command("/bin/cat", filepath.Join(app, "a")).Output()
	if err != nil || !bytes.Equal(out, pts["a"]) {
		t.Fatalf("cat a: %v, %d bytes, want %d", err, len(out), len(pts["a"]))
	}
	if got := sendfileAll(t, filepath.Join(app, "b")); !bytes.Equal(got, pts["b"]) {
		t.Fatalf("sendfile b: %d bytes, want %d", len(got), len(pts["b"]))
	}
	f, err := os.Open(filepath.Join(app, "c"))
	if err != nil {
		t.Fatal(err)
	}
	fi, err := f.Stat()
	_ = f.Close()
	if err != nil || fi.Size() != int64(len(pts["c"])) {
		t.Errorf("fstat of open c: %v, want size %d", err, len(pts["c"]))
	}
	got, err := os.ReadFile(resource)
	if err != nil || !bytes.Equal(got, resourcePT) {
		t.Fatalf("read resource: %v", err)
	}
	for name := range pts {
		if n := client.count("kbs:///default/sealed-secret/" + name); n != 1 {
			t.Errorf("%s: value fetched %d times, want 1", name, n)
		}
	}
	for p, want := range map[string]int{filepath.Join(app, "a"): len(pts["a"]), filepath.Join(app, "b"): len(pts["b"]), resource: len(resourcePT)} {
		fi, err := os.Stat(p)
		if err != nil || fi.Size() != int64(want) {
			t.Errorf("%s after a read: %v, want size %d", p, err, want)
		}
	}
}

// sendfileAll reads path with sendfile(2) into a pipe, as busybox cat
// does; the kernel then reads through splice, bounded by the size it
// last saw.
func sendfileAll(t *testing.T, path string) []byte {
	t.Helper()
	in, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	done := make(chan []byte)
	go func() {
		b, _ := io.ReadAll(r)
		done <- b
	}()
	for {
		n, err := syscall.Sendfile(int(w.Fd()), int(in.Fd()), nil, 1<<16)
		if err != nil {
			_ = w.Close()
			t.Fatalf("sendfile: %v", err)
		}
		if n == 0 {
			break
		}
	}
	_ = w.Close()
	return <-done
}
