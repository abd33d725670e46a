package secretsfs_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cocoon-cc/cocoon/attest/kbs/server"
	"github.com/cocoon-cc/cocoon/secretsfs"
	"github.com/cocoon-cc/cocoon/secretsfs/internal/devkbs"
)

// shmDir returns a fresh directory on /dev/shm (tmpfs), removed at the end.
func shmDir(t *testing.T) string {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs("/dev/shm", &st); err != nil || uint32(st.Type) != unix.TMPFS_MAGIC {
		t.Skip("/dev/shm is not tmpfs here")
	}
	d, err := os.MkdirTemp("/dev/shm", "secretsfs-cred-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(d) })
	return d
}

func TestProvisionCredentials(t *testing.T) {
	ctx, logs := captureLogs(t)
	k := devkbs.Start(t, server.AllowAllPolicy)
	cred := marker(t, "credential")
	k.Put(t, "default/cred/1", cred)
	client := k.Client(t)
	shm := shmDir(t)
	disk := t.TempDir()
	var st unix.Statfs_t
	if err := unix.Statfs(disk, &st); err != nil {
		t.Fatal(err)
	}
	diskIsMemory := uint32(st.Type) == unix.TMPFS_MAGIC || uint32(st.Type) == unix.RAMFS_MAGIC

	for _, tc := range []struct {
		name string
		cred secretsfs.Credential
		is   error
		msg  string
	}{
		{name: "tmpfs", cred: secretsfs.Credential{ResourceURI: "kbs:///default/cred/1", Path: filepath.Join(shm, "cred")}},
		{name: "tmpfs new subdirectories", cred: secretsfs.Credential{ResourceURI: "kbs:///default/cred/1", Path: filepath.Join(shm, "cdh", "kbs", "cred")}},
		{name: "disk refused", cred: secretsfs.Credential{ResourceURI: "kbs:///default/cred/1", Path: filepath.Join(disk, "cred")}, is: secretsfs.ErrNotMemoryBacked},
		{name: "disk subdirectory refused", cred: secretsfs.Credential{ResourceURI: "kbs:///default/cred/1", Path: filepath.Join(disk, "sub", "cred")}, is: secretsfs.ErrNotMemoryBacked},
		{name: "relative", cred: secretsfs.Credential{ResourceURI: "kbs:///default/cred/1", Path: "run/cred"}, msg: "absolute"},
		{name: "dot dot", cred: secretsfs.Credential{ResourceURI: "kbs:///default/cred/1", Path: shm + "/../shm/cred"}, msg: "clean"},
		{name: "bad uri", cred: secretsfs.Credential{ResourceURI: "https://x/y", Path: filepath.Join(shm, "c2")}, msg: "scheme"},
		{name: "missing resource", cred: secretsfs.Credential{ResourceURI: "kbs:///default/cred/none", Path: filepath.Join(shm, "c3")}, msg: "get resource"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diskIsMemory && tc.is != nil {
				t.Skip("the test temp dir is on tmpfs here")
			}
			err := secretsfs.ProvisionCredentials(ctx, client, []secretsfs.Credential{tc.cred})
			if tc.is == nil && tc.msg == "" {
				if err != nil {
					t.Fatal(err)
				}
				fi, err := os.Stat(tc.cred.Path)
				if err != nil {
					t.Fatal(err)
				}
				if fi.Mode() != 0o400 {
					t.Fatalf("mode %v", fi.Mode())
				}
				got, err := os.ReadFile(tc.cred.Path)
				if err != nil || !bytes.Equal(got, cred) {
					t.Fatalf("content: %v", err)
				}
				// Overwriting an existing credential works (rename).
				if err := secretsfs.ProvisionCredentials(ctx, client, []secretsfs.Credential{tc.cred}); err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				t.Fatal("accepted")
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Fatalf("err = %v, want %v", err, tc.is)
			}
			if !strings.Contains(err.Error(), tc.msg) || !strings.Contains(err.Error(), tc.cred.Path) {
				t.Fatalf("err %q does not name the credential and %q", err, tc.msg)
			}
			if _, serr := os.Stat(tc.cred.Path); !errors.Is(serr, os.ErrNotExist) {
				t.Fatalf("refused credential was written: %v", serr)
			}
		})
	}
	assertNotUnder(t, disk, cred)
	// No temporary file is left next to the credentials.
	ents, err := os.ReadDir(shm)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Fatalf("temporary file %s left", e.Name())
		}
	}
	if bytes.Contains(logs.Bytes(), cred) {
		t.Fatal("credential in the logs")
	}
	if err := secretsfs.ProvisionCredentials(ctx, nil, []secretsfs.Credential{{ResourceURI: "kbs:///a/b/c", Path: filepath.Join(shm, "x")}}); err == nil {
		t.Fatal("nil getter accepted")
	}
}
