package bundle

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

func TestRuntimeSpec(t *testing.T) {
	created := time.Date(2026, 1, 2, 3, 4, 5, 600, time.UTC)
	for _, tc := range []struct {
		name  string
		img   ocispec.Image
		check func(t *testing.T, s *specs.Spec)
	}{
		{
			name: "defaults",
			img:  ocispec.Image{Platform: ocispec.Platform{OS: "linux", Architecture: "amd64"}},
			check: func(t *testing.T, s *specs.Spec) {
				p := s.Process
				if !reflect.DeepEqual(p.Args, []string{"sh"}) || p.Cwd != "/" || len(p.Env) != 2 || p.Env[1] != "TERM=xterm" {
					t.Errorf("process = %+v, want oci-spec-rs's default (sh, /, PATH and TERM)", p)
				}
				if s.Hostname != "image-rs" || s.Version != "1.0.2-dev" || s.Root.Path != "rootfs" || !s.Root.Readonly {
					t.Errorf("hostname %q, version %q, root %+v", s.Hostname, s.Version, s.Root)
				}
				if len(s.Mounts) != 7 || s.Mounts[0].Destination != "/proc" || s.Mounts[6].Destination != "/sys/fs/cgroup" {
					t.Errorf("mounts = %+v", s.Mounts)
				}
				want := map[string]string{annotationOS: "linux", annotationArch: "amd64"}
				if !reflect.DeepEqual(s.Annotations, want) {
					t.Errorf("annotations = %v, want %v", s.Annotations, want)
				}
				if len(s.Linux.Namespaces) != 6 || !p.NoNewPrivileges || p.Rlimits[0].Hard != 1024 {
					t.Errorf("linux = %+v, process = %+v", s.Linux, p)
				}
			},
		},
		{
			name: "verbatim fields",
			img: ocispec.Image{Platform: ocispec.Platform{OS: "linux", Architecture: "arm64", Variant: "v8", OSVersion: "6.1", OSFeatures: []string{"a<b"}},
				Created: &created, Author: "me",
				Config: ocispec.ImageConfig{
					Entrypoint: []string{"/bin/app", "--flag"}, Cmd: []string{"serve"}, Env: []string{"A=1"}, WorkingDir: "/srv",
					StopSignal: "SIGTERM", ExposedPorts: map[string]struct{}{"80/tcp": {}, "53/udp": {}},
					Volumes: map[string]struct{}{"/data": {}, "/cache": {}},
				}},
			check: func(t *testing.T, s *specs.Spec) {
				p := s.Process
				if !reflect.DeepEqual(p.Args, []string{"/bin/app", "--flag", "serve"}) || p.Cwd != "/srv" || !reflect.DeepEqual(p.Env, []string{"A=1"}) {
					t.Errorf("process = %+v", p)
				}
				want := map[string]string{
					annotationOS: "linux", annotationArch: "arm64", annotationVariant: "v8", annotationOSVersion: "6.1",
					annotationOSFeatures: `["a<b"]`, annotationAuthor: "me", annotationCreated: "2026-01-02T03:04:05.0000006Z",
					annotationStopSignal: "SIGTERM", annotationExposedPort: "53/udp,80/tcp",
				}
				if !reflect.DeepEqual(s.Annotations, want) {
					t.Errorf("annotations = %v\nwant %v", s.Annotations, want)
				}
				if len(s.Mounts) != 9 || s.Mounts[0].Destination != "/cache" || s.Mounts[1].Destination != "/data" ||
					s.Mounts[0].Type != "tmpfs" || s.Mounts[0].Source != "" || strings.Join(s.Mounts[1].Options, ",") != "nosuid,noexec,nodev,relatime,rw" {
					t.Errorf("volume mounts = %+v", s.Mounts[:2])
				}
			},
		},
		{
			name: "cmd only; labels win over implicit annotations but not over exposed ports",
			img: ocispec.Image{Platform: ocispec.Platform{OS: "linux", Architecture: "amd64"},
				Config: ocispec.ImageConfig{Cmd: []string{"echo", "hi"}, StopSignal: "SIGINT", ExposedPorts: map[string]struct{}{"8080/tcp": {}},
					Labels: map[string]string{annotationOS: "label-os", annotationStopSignal: "SIGKILL", annotationExposedPort: "1/tcp", "x": "y"}}},
			check: func(t *testing.T, s *specs.Spec) {
				if !reflect.DeepEqual(s.Process.Args, []string{"echo", "hi"}) {
					t.Errorf("args = %v", s.Process.Args)
				}
				want := map[string]string{annotationOS: "label-os", annotationArch: "amd64", annotationStopSignal: "SIGKILL",
					annotationExposedPort: "8080/tcp", "x": "y"}
				if !reflect.DeepEqual(s.Annotations, want) {
					t.Errorf("annotations = %v\nwant %v", s.Annotations, want)
				}
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := runtimeSpec(&tc.img, specs.User{})
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, s)
			// The spec round-trips through JSON as config.json carries it.
			b, err := json.Marshal(s)
			if err != nil {
				t.Fatal(err)
			}
			var back specs.Spec
			if err := json.Unmarshal(b, &back); err != nil {
				t.Fatal(err)
			}
			if back.Process.Cwd != s.Process.Cwd || back.Hostname != s.Hostname {
				t.Errorf("round trip changed the spec")
			}
		})
	}
	if _, err := runtimeSpec(&ocispec.Image{Platform: ocispec.Platform{OS: "windows"}}, specs.User{}); err == nil || !strings.Contains(err.Error(), "unsupported OS") {
		t.Errorf("windows image: error = %v", err)
	}
}

func TestResolveUser(t *testing.T) {
	root := t.TempDir()
	write := func(path, body string) {
		t.Helper()
		p := filepath.Join(root, path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("real/passwd", "# comment\nroot:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\nshort:x\n")
	// An absolute symlink resolves inside the rootfs, as in the container.
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/real/passwd", filepath.Join(root, "etc/passwd")); err != nil {
		t.Fatal(err)
	}
	write("etc/group", "root:x:0:\napp:x:1001:\nwheel:x:10:root,app\naudio:x:29:other,app\nstaff:x:50:\n")
	for _, tc := range []struct {
		user string
		want specs.User
		err  string
	}{
		{user: "", want: specs.User{}},
		{user: "app", want: specs.User{UID: 1000, GID: 1001, AdditionalGids: []uint32{10, 29}}},
		{user: "1000", want: specs.User{UID: 1000, GID: 1001, AdditionalGids: []uint32{10, 29}}},
		{user: "4242", want: specs.User{UID: 4242}},
		{user: "app:staff", want: specs.User{UID: 1000, GID: 50}},
		{user: "app:77", want: specs.User{UID: 1000, GID: 77}},
		{user: "4242:4343", want: specs.User{UID: 4242, GID: 4343}},
		{user: "nobody", err: `no user "nobody"`},
		{user: "app:nogroup", err: `no group "nogroup"`},
		{user: ":1", err: "empty user or group"},
		{user: "app:", err: "empty user or group"},
		{user: "99999999999", err: `no user "99999999999"`},
	} {
		t.Run(tc.user, func(t *testing.T) {
			got, err := resolveUser(root, tc.user)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("resolveUser(%q) = %+v, %v; want %+v", tc.user, got, err, tc.want)
			}
		})
	}
}

func TestResolveUserStaysInRootfs(t *testing.T) {
	outside := t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "passwd"), []byte("evil:x:0:0::/:/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	rel, err := filepath.Rel(filepath.Join(root, "etc"), filepath.Join(outside, "passwd"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(rel, filepath.Join(root, "etc/passwd")); err != nil {
		t.Fatal(err)
	}
	if _, err := resolveUser(root, "evil"); err == nil || !strings.Contains(err.Error(), `no user "evil"`) {
		t.Errorf("a symlink out of the rootfs was followed: error = %v", err)
	}
	if err := os.Remove(filepath.Join(root, "etc/passwd")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(filepath.Join(root, "etc/passwd"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := resolveUser(root, "evil"); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("FIFO passwd: error = %v", err)
	}
}
