package server_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"github.com/cocoon-cc/cocoon/fusefs/server"
	"github.com/cocoon-cc/cocoon/image/decrypt"
	"github.com/cocoon-cc/cocoon/internal/detach"
	"github.com/cocoon-cc/cocoon/internal/regtest"
)

// Roles of a re-executed test binary besides the server.
const (
	roleEnv   = "LAZYSERVER_TEST_ROLE"
	paramsEnv = "LAZYSERVER_TEST_PARAMS"
)

// TestMain lets the test binary be the server Connect re-executes, the
// "cocoond" child that starts it and is killed, and a peer of another uid.
func TestMain(m *testing.M) {
	server.RunServerIfRequested()
	switch os.Getenv(roleEnv) {
	case "cocoond":
		os.Exit(fakeCocoond())
	case "peer":
		os.Exit(foreignPeer())
	}
	os.Exit(m.Run())
}

// childParams is what the test hands the "cocoond" child (no secrets).
type childParams struct {
	StateDir string
	Dir      string
	Config   server.Config
	Spec     server.LayerSpec
}

// fakeCocoond connects (starting the server), mounts, reports the server
// PID on stdout and waits to be killed.
func fakeCocoond() int {
	var p childParams
	if err := json.Unmarshal([]byte(os.Getenv(paramsEnv)), &p); err != nil {
		fmt.Println("error:", err)
		return 1
	}
	ctx := context.Background()
	c, err := server.Connect(ctx, server.Options{StateDir: p.StateDir})
	if err == nil {
		err = c.Configure(ctx, p.Config)
	}
	if err == nil {
		err = c.Mount(ctx, p.Dir, p.Spec)
	}
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	pid, _ := c.ServerPID()
	fmt.Println("mounted", pid)
	select {} // until SIGKILL
}

// foreignPeer speaks the protocol to the socket named in the params and
// prints what the server answered to a List.
func foreignPeer() int {
	conn, err := net.Dial("unix", os.Getenv(paramsEnv))
	if err != nil {
		fmt.Println("dial:", err)
		return 1
	}
	defer conn.Close()
	req := []byte(`{"op":"list"}`)
	hdr := []byte{0, 0, 0, byte(len(req))}
	// The server may refuse (and close) before the request arrives: what
	// it sent stays readable.
	_, _ = conn.Write(append(hdr, req...))
	_ = conn.SetReadDeadline(time.Now().Add(time.Minute))
	b, _ := io.ReadAll(conn)
	if len(b) < 4 {
		fmt.Println("no answer")
		return 0
	}
	fmt.Println(string(b[4:]))
	return 0
}

func requireFUSE(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting FUSE needs root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("no /dev/fuse")
	}
}

// layer is an eStargz layer pushed to the test registry.
type layer struct {
	blob  []byte
	spec  server.LayerSpec
	files map[string][]byte
}

func randomBytes(seed uint64, n int) []byte {
	r := mrand.New(mrand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte('a' + r.IntN(26))
	}
	return b
}

// buildLayer builds an eStargz layer of small chunks: an early file, a big
// one of many chunks and a late file.
func buildLayer(t *testing.T) (blob []byte, toc, diffID digest.Digest, files map[string][]byte) {
	return buildLayerSeed(t, 1)
}

func buildLayerSeed(t *testing.T, seed uint64) (blob []byte, toc, diffID digest.Digest, files map[string][]byte) {
	t.Helper()
	files = map[string][]byte{
		"etc/early.txt": []byte("read before the client dies\n"),
		"data/big.bin":  randomBytes(seed, 300<<10),
		"data/late.txt": randomBytes(seed+1000, 20<<10),
	}
	var entries []regtest.Entry
	entries = append(entries, regtest.Entry{Name: "etc/", Type: '5'}, regtest.Entry{Name: "data/", Type: '5'})
	for _, n := range []string{"etc/early.txt", "data/big.bin", "data/late.txt"} {
		entries = append(entries, regtest.Entry{Name: n, Body: string(files[n])})
	}
	tb := regtest.Tar(t, entries...)
	b, err := estargz.Build(io.NewSectionReader(bytes.NewReader(tb), 0, int64(len(tb))), estargz.WithChunkSize(4096))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	blob, err = io.ReadAll(b)
	if err != nil {
		t.Fatal(err)
	}
	return blob, b.TOCDigest(), b.DiffID(), files
}

func push(t *testing.T, reg *regtest.Registry, blob []byte) string {
	t.Helper()
	ref := reg.Host + "/lazy/img"
	repo, err := name.NewRepository(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteLayer(repo, static.NewLayer(blob, types.OCILayer)); err != nil {
		t.Fatal(err)
	}
	return ref
}

func plainLayer(t *testing.T, reg *regtest.Registry) *layer {
	return plainLayerSeed(t, reg, 1)
}

func plainLayerSeed(t *testing.T, reg *regtest.Registry, seed uint64) *layer {
	blob, toc, diffID, files := buildLayerSeed(t, seed)
	ref := push(t, reg, blob)
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(blob), Size: int64(len(blob))}
	return &layer{blob: blob, files: files, spec: server.NewLayerSpec(ref+":v1", digest.Digest("sha256:"+strings.Repeat("0", 64)), desc, diffID, toc, false)}
}

// env is one test's state directory and mount point, cleaned up by PID
// and mount point.
type env struct {
	state, dir string
	reg        *regtest.Registry
}

func newEnv(t *testing.T) *env {
	t.Helper()
	requireFUSE(t)
	root := t.TempDir()
	e := &env{state: filepath.Join(root, "state"), dir: filepath.Join(root, "mnt"), reg: regtest.Start(t)}
	if err := os.Mkdir(e.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if st, err := server.ReadState(e.state); err == nil {
			if err := server.Stop(e.state, time.Minute); err != nil {
				t.Log(err)
				_ = syscall.Kill(st.PID, syscall.SIGKILL)
			}
		}
		_ = unix.Unmount(e.dir, unix.MNT_DETACH)
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(e.state, "server.log"))
			t.Logf("server log:\n%s", b)
		}
	})
	return e
}

func (e *env) config(cacheDir string) server.Config {
	return server.Config{Insecure: []string{e.reg.Host}, Retries: 2, RetryBackoff: int64(time.Millisecond), CacheDir: cacheDir}
}

func connect(t *testing.T, e *env, key server.KeyFunc) *server.Client {
	t.Helper()
	c, err := server.Connect(context.Background(), server.Options{StateDir: e.state, Key: key})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func mounted(t *testing.T, dir string) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}

func readFile(t *testing.T, dir, name string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: %d bytes, not the layer's %d", name, len(got), len(want))
	}
}

// waitState polls List until dir is in state want (bounded, so a hang
// fails instead of blocking the suite).
func waitState(t *testing.T, c *server.Client, dir, want string) server.MountInfo {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		ms, err := c.List(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range ms {
			if m.Dir == dir && m.State == want {
				return m
			}
			if m.Dir == dir && m.State == server.StateBad && want != server.StateBad {
				t.Fatalf("layer bad: %s", m.Error)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never reached %s: %+v", dir, want, ms)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestMountsSurviveClientKill: a "cocoond" child starts the server and
// mounts a layer; after SIGKILL of the child the mount keeps serving,
// including chunks never fetched before (lazily, from the registry); a new
// client reaches the same server, lists the mount and unmounts it.
func TestMountsSurviveClientKill(t *testing.T) {
	e := newEnv(t)
	l := plainLayer(t, e.reg)
	params, _ := json.Marshal(childParams{StateDir: e.state, Dir: e.dir, Config: e.config(""), Spec: l.spec})
	child := exec.Command("/proc/self/exe")
	child.Env = append(os.Environ(), roleEnv+"=cocoond", paramsEnv+"="+string(params))
	child.Stderr = os.Stderr
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = child.Process.Kill(); _ = child.Wait() })
	line, _ := bufio.NewReader(out).ReadString('\n')
	var serverPID int
	if _, err := fmt.Sscanf(line, "mounted %d", &serverPID); err != nil {
		t.Fatalf("child: %q", line)
	}
	readFile(t, e.dir, "etc/early.txt", l.files["etc/early.txt"])

	if err := child.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = child.Wait() // killed, as intended
	before := e.reg.Gets.Load()
	readFile(t, e.dir, "data/late.txt", l.files["data/late.txt"])
	readFile(t, e.dir, "data/big.bin", l.files["data/big.bin"])
	if e.reg.Gets.Load() == before {
		t.Fatal("files never read before were served without fetching them")
	}

	c := connect(t, e, nil)
	if pid, _ := c.ServerPID(); pid != serverPID {
		t.Fatalf("new client reached server %d, the child started %d", pid, serverPID)
	}
	mfs, err := c.Gather()
	if err != nil {
		t.Fatal(err)
	}
	values := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			values[mf.GetName()] += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	if values["cocoon_lazy_range_requests_total"] == 0 || values["cocoon_lazy_server_process_resident_memory_bytes"] == 0 {
		t.Fatalf("server metrics: %v", values)
	}
	ms, err := c.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 1 || ms[0].Dir != e.dir || ms[0].Layer != l.spec.Blob.Digest || ms[0].State != server.StateLazy {
		t.Fatalf("List = %+v", ms)
	}
	// A restarted cocoond re-mounting what it remembers is a no-op.
	if err := c.Configure(context.Background(), e.config("")); err != nil {
		t.Fatal(err)
	}
	if err := c.Mount(context.Background(), e.dir, l.spec); err != nil {
		t.Fatal(err)
	}
	readFile(t, e.dir, "etc/early.txt", l.files["etc/early.txt"])
	if b, _ := os.ReadFile(filepath.Join(e.state, "server.log")); bytes.Contains(b, []byte("unmounted by someone else")) {
		t.Fatal("the server did not recognise its own live mount")
	}
	// Unmounted behind the server's back (cocoond cleaning up by hand): a
	// Mount serves it again rather than trusting its own records.
	if err := unix.Unmount(e.dir, unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	if err := c.Mount(context.Background(), e.dir, l.spec); err != nil {
		t.Fatal(err)
	}
	if !mounted(t, e.dir) {
		t.Fatal("not mounted again")
	}
	readFile(t, e.dir, "data/late.txt", l.files["data/late.txt"])
	if err := c.Unmount(context.Background(), e.dir); err != nil {
		t.Fatal(err)
	}
	if mounted(t, e.dir) {
		t.Fatal("still mounted after Unmount")
	}
	if ms, err := c.List(context.Background()); err != nil || len(ms) != 0 {
		t.Fatalf("List after Unmount = %+v, %v", ms, err)
	}
	// As the snapshotter's LazyMounter: unmounting what is not served is
	// not an error.
	if err := c.Unmount(context.Background(), e.dir); err != nil {
		t.Fatal(err)
	}
}

// TestServerCrashAndLocalCopy: a completed layer is served from the local
// copy without registry requests; when the server is killed -9 the next
// request of the client reconnects: it detects the stale state, the new
// server it starts detaches the dead mount, and it serves the layer again from the local copy, not the
// registry.
func TestServerCrashAndLocalCopy(t *testing.T) {
	e := newEnv(t)
	l := plainLayer(t, e.reg)
	cache := filepath.Join(filepath.Dir(e.state), "cache")
	ctx := context.Background()
	c := connect(t, e, nil)
	if err := c.Configure(ctx, e.config(cache)); err != nil {
		t.Fatal(err)
	}
	if err := c.Mount(ctx, e.dir, l.spec); err != nil {
		t.Fatal(err)
	}
	waitState(t, c, e.dir, server.StateComplete)
	before := e.reg.Gets.Load()
	for n, b := range l.files {
		readFile(t, e.dir, n, b)
	}
	if got := e.reg.Gets.Load(); got != before {
		t.Fatalf("%d registry requests after the layer was complete", got-before)
	}

	pid, start := c.ServerPID()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for detach.Alive(pid, start) {
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := os.ReadFile(filepath.Join(e.dir, "etc/early.txt")); err == nil {
		t.Fatal("a dead server's mount still served")
	}
	if !mounted(t, e.dir) {
		t.Fatal("the kernel dropped the dead server's mount by itself: the cleanup below proves nothing")
	}
	// The old client's connection is dead: it reconnects, which starts a
	// new server, and gives it the configuration again.
	if ms, err := c.List(ctx); err != nil || len(ms) != 0 {
		t.Fatalf("List from a new server = %+v, %v", ms, err)
	}
	if pid2, _ := c.ServerPID(); pid2 == pid {
		t.Fatal("Connect reused a dead server")
	}
	if mounted(t, e.dir) {
		t.Fatal("the dead server's mount was not detached")
	}
	if err := c.Mount(ctx, e.dir, l.spec); err != nil {
		t.Fatal(err)
	}
	for n, b := range l.files {
		readFile(t, e.dir, n, b)
	}
	waitState(t, c, e.dir, server.StateComplete)
	if got := e.reg.Gets.Load(); got != before {
		t.Fatalf("%d registry requests re-serving a layer with a local copy", got-before)
	}
	// Unmount drops the local copy.
	if err := c.Unmount(ctx, e.dir); err != nil {
		t.Fatal(err)
	}
	if left, _ := filepath.Glob(filepath.Join(cache, "*", "*")); len(left) != 0 {
		t.Fatalf("local copies left after Unmount: %v", left)
	}
}

// fakeResources serves KEKs without attestation.
type fakeResources map[string][]byte

func (f fakeResources) GetResource(_ context.Context, uri string) ([]byte, error) {
	b, ok := f[uri]
	if !ok {
		return nil, fmt.Errorf("resource %s: not found", uri)
	}
	return bytes.Clone(b), nil
}

// TestEncryptedLayer: an ocicrypt-encrypted eStargz layer is served by the
// server with the layer key shipped over the socket; the background fetch
// checks the ciphertext digest and HMAC and completes the layer.
func TestEncryptedLayer(t *testing.T) {
	e := newEnv(t)
	blob, toc, diffID, files := buildLayer(t)
	enc, err := decrypt.NewEncrypter(bytes.NewReader(blob), digest.FromBytes(blob))
	if err != nil {
		t.Fatal(err)
	}
	ct, err := io.ReadAll(enc)
	if err != nil {
		t.Fatal(err)
	}
	kek := make([]byte, 32)
	rand.Read(kek)
	const kid = "kbs:///default/key/lazy"
	ann, err := enc.Annotations(kek, kid)
	if err != nil {
		t.Fatal(err)
	}
	ref := push(t, e.reg, ct)
	desc := ocispec.Descriptor{MediaType: decrypt.EncryptedMediaType(ocispec.MediaTypeImageLayerGzip), Digest: digest.FromBytes(ct), Size: int64(len(ct)), Annotations: ann}
	spec := server.NewLayerSpec(ref+":v1", "", desc, diffID, toc, true)
	unwraps := 0
	unwrap := server.UnwrapWith(decrypt.Options{Resources: fakeResources{kid: kek}})
	keys := func(ctx context.Context, l server.LayerSpec) (*decrypt.LayerKey, error) {
		unwraps++
		return unwrap(ctx, l)
	}
	ctx := context.Background()
	c := connect(t, e, keys)
	if err := c.Configure(ctx, e.config(filepath.Join(filepath.Dir(e.state), "cache"))); err != nil {
		t.Fatal(err)
	}
	noKey := connect(t, e, nil)
	if err := noKey.Mount(ctx, e.dir, spec); err == nil || !strings.Contains(err.Error(), "no key source") {
		t.Fatalf("encrypted mount without a key: %v", err)
	}
	if err := c.Mount(ctx, e.dir, spec); err != nil {
		t.Fatal(err)
	}
	if unwraps != 1 {
		t.Fatalf("%d unwraps", unwraps)
	}
	for n, b := range files {
		readFile(t, e.dir, n, b)
	}
	// Mounting what is served again (a restarted cocoond) needs no key.
	if err := c.Mount(ctx, e.dir, spec); err != nil || unwraps != 1 {
		t.Fatalf("second Mount: %v, %d unwraps", err, unwraps)
	}
	m := waitState(t, c, e.dir, server.StateComplete)
	if !m.Encrypted || m.Error != "" {
		t.Fatalf("List: %+v", m)
	}
	if err := c.Unmount(ctx, e.dir); err != nil {
		t.Fatal(err)
	}

	// The same ciphertext under a descriptor whose pubopts name another
	// HMAC: chunks still verify against the TOC, so reads work until the
	// background fetch checks the whole ciphertext and marks the layer bad.
	bad := spec
	bad.Blob.Annotations = map[string]string{}
	for k, v := range desc.Annotations {
		bad.Blob.Annotations[k] = v
	}
	bad.Blob.Annotations[decrypt.AnnotationPubOpts] = wrongHMAC(t, desc.Annotations[decrypt.AnnotationPubOpts])
	if err := c.Mount(ctx, e.dir, bad); err != nil {
		t.Fatal(err)
	}
	m = waitState(t, c, e.dir, server.StateBad)
	if !strings.Contains(m.Error, "HMAC") {
		t.Fatalf("bad for another reason: %s", m.Error)
	}
	if _, err := os.ReadFile(filepath.Join(e.dir, "data/late.txt")); !errors.Is(err, syscall.EIO) {
		t.Fatalf("read of a bad layer: %v", err)
	}
	if err := c.Unmount(ctx, e.dir); err != nil {
		t.Fatal(err)
	}
}

// wrongHMAC returns the pubopts annotation with one bit of its HMAC flipped.
func wrongHMAC(t *testing.T, pubopts string) string {
	t.Helper()
	raw, err := base64.StdEncoding.DecodeString(pubopts)
	if err != nil {
		t.Fatal(err)
	}
	var pub map[string]any
	if err := json.Unmarshal(raw, &pub); err != nil {
		t.Fatal(err)
	}
	mac, err := base64.StdEncoding.DecodeString(pub["hmac"].(string))
	if err != nil {
		t.Fatal(err)
	}
	mac[0] ^= 1
	pub["hmac"] = base64.StdEncoding.EncodeToString(mac)
	raw, _ = json.Marshal(pub)
	return base64.StdEncoding.EncodeToString(raw)
}

// TestPeerOfAnotherUIDRefused: with the state directory opened up, a
// process of another uid reaches the socket, and the server refuses it by
// its peer credentials.
func TestPeerOfAnotherUIDRefused(t *testing.T) {
	e := newEnv(t)
	c := connect(t, e, nil)
	if _, err := c.List(context.Background()); err != nil {
		t.Fatal(err)
	}
	st, err := server.ReadState(e.state)
	if err != nil {
		t.Fatal(err)
	}
	// The test binary and the socket's directories must be reachable by
	// nobody (65534).
	bin, err := os.MkdirTemp("", "lazyserver-peer-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(bin) })
	self, err := os.ReadFile("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(bin, "peer.test")
	if err := os.WriteFile(exe, self, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{bin, filepath.Dir(filepath.Dir(e.state)), filepath.Dir(e.state), e.state} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(st.Socket, 0o666); err != nil {
		t.Fatal(err)
	}
	peer := exec.Command(exe)
	peer.Env = append(os.Environ(), roleEnv+"=peer", paramsEnv+"="+st.Socket)
	peer.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := peer.CombinedOutput()
	if err != nil {
		t.Fatalf("peer: %v: %s", err, out)
	}
	if !strings.Contains(string(out), "runs as uid 65534") || strings.Contains(string(out), "mounts") {
		t.Fatalf("the server answered uid 65534: %s", out)
	}
	// The refusal closed that connection only.
	if _, err := c.List(context.Background()); err != nil {
		t.Fatal(err)
	}

}

// TestConcurrentConnect: clients starting at once share one server (the
// loser of the lock race connects to the winner), and credentials travel
// only in the secret frame.
func TestConcurrentConnect(t *testing.T) {
	e := newEnv(t)
	const n = 4
	pids := make(chan int, n)
	errs := make(chan error, n)
	for range n {
		go func() {
			c, err := server.Connect(context.Background(), server.Options{StateDir: e.state})
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			cfg := e.config("")
			cfg.AuthFile = []byte(`{"auths":{"` + e.reg.Host + `":{"auth":"dXNlcjpwYXNz"}}}`)
			if err := c.Configure(context.Background(), cfg); err != nil {
				errs <- err
				return
			}
			pid, _ := c.ServerPID()
			pids <- pid
		}()
	}
	first := 0
	for range n {
		select {
		case err := <-errs:
			t.Fatal(err)
		case pid := <-pids:
			if first == 0 {
				first = pid
			}
			if pid != first {
				t.Fatalf("clients reached servers %d and %d", first, pid)
			}
		}
	}
	c := connect(t, e, nil)
	bad := e.config("")
	bad.AuthFile = []byte("not json")
	if err := c.Configure(context.Background(), bad); err == nil || !strings.Contains(err.Error(), "credentials") {
		t.Fatalf("a malformed auth file was accepted: %v", err)
	}
}

// TestSlowMountBlocksNoOther: while one layer's Mount waits for its
// registry, a Mount of another layer through the same Client completes.
func TestSlowMountBlocksNoOther(t *testing.T) {
	e := newEnv(t)
	slow, fast := plainLayerSeed(t, e.reg, 1), plainLayerSeed(t, e.reg, 2)
	release := make(chan struct{})
	var released bool
	t.Cleanup(func() {
		if !released {
			close(release)
		}
	})
	held := make(chan struct{}, 16)
	hook := func(_ http.ResponseWriter, req *http.Request) bool {
		if strings.HasSuffix(req.URL.Path, slow.spec.Blob.Digest.String()) {
			held <- struct{}{}
			<-release
		}
		return false
	}
	e.reg.Hook.Store(&hook)
	ctx := context.Background()
	c := connect(t, e, nil)
	if err := c.Configure(ctx, e.config("")); err != nil {
		t.Fatal(err)
	}
	slowDir := filepath.Join(filepath.Dir(e.dir), "slow")
	if err := os.Mkdir(slowDir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(slowDir, unix.MNT_DETACH) })
	slowDone := make(chan error, 1)
	go func() { slowDone <- c.Mount(ctx, slowDir, slow.spec) }()
	<-held // the slow Mount is waiting for the registry now
	fastDone := make(chan error, 1)
	go func() { fastDone <- c.Mount(ctx, e.dir, fast.spec) }()
	select {
	case err := <-fastDone:
		if err != nil {
			t.Fatal(err)
		}
	case err := <-slowDone:
		t.Fatalf("the held Mount returned first: %v", err)
	case <-time.After(time.Minute):
		t.Fatal("a Mount waited for another layer's registry requests")
	}
	readFile(t, e.dir, "data/late.txt", fast.files["data/late.txt"])
	close(release)
	released = true
	if err := <-slowDone; err != nil {
		t.Fatal(err)
	}
	readFile(t, slowDir, "data/late.txt", slow.files["data/late.txt"])
	for _, d := range []string{slowDir, e.dir} {
		if err := c.Unmount(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
}

// TestStateDirTooLongForSocket: a state directory whose socket path does
// not fit a unix socket address fails Connect with an error saying so,
// before any server is started.
func TestStateDirTooLongForSocket(t *testing.T) {
	dir := filepath.Join(t.TempDir(), strings.Repeat("d", 100))
	_, err := server.Connect(context.Background(), server.Options{StateDir: dir})
	if err == nil || !strings.Contains(err.Error(), "a unix socket path holds at most 107") {
		t.Fatalf("Connect = %v, want the socket path length error", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state directory created anyway: %v", err)
	}
}

// TestCompletionConcurrencyBounded: with CompletionConcurrency 1, a second
// layer's background fetch does not start while the first one's is held
// at the registry; it runs, and both layers complete, once the first is
// released. (Without the bound the second fetch reaches the registry at
// once.)
func TestCompletionConcurrencyBounded(t *testing.T) {
	e := newEnv(t)
	first, second := plainLayerSeed(t, e.reg, 1), plainLayerSeed(t, e.reg, 2)
	release := make(chan struct{})
	var released bool
	t.Cleanup(func() {
		if !released {
			close(release)
		}
	})
	// A background fetch reads the blob from offset 0; mounting reads only
	// its footer and TOC, at the end.
	fromStart := func(req *http.Request) bool { return strings.HasPrefix(req.Header.Get("Range"), "bytes=0-") }
	firstHeld, secondStarted := make(chan struct{}, 16), make(chan struct{}, 16)
	hook := func(_ http.ResponseWriter, req *http.Request) bool {
		switch {
		case !fromStart(req):
		case strings.HasSuffix(req.URL.Path, first.spec.Blob.Digest.String()):
			firstHeld <- struct{}{}
			<-release
		case strings.HasSuffix(req.URL.Path, second.spec.Blob.Digest.String()):
			secondStarted <- struct{}{}
		}
		return false
	}
	e.reg.Hook.Store(&hook)
	ctx := context.Background()
	c := connect(t, e, nil)
	cfg := e.config(filepath.Join(filepath.Dir(e.state), "cache"))
	cfg.CompletionConcurrency = 1
	if err := c.Configure(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	secondDir := filepath.Join(filepath.Dir(e.dir), "second")
	if err := os.Mkdir(secondDir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(secondDir, unix.MNT_DETACH) })
	if err := c.Mount(ctx, e.dir, first.spec); err != nil {
		t.Fatal(err)
	}
	<-firstHeld // the first layer's background fetch holds the only slot
	if err := c.Mount(ctx, secondDir, second.spec); err != nil {
		t.Fatal(err)
	}
	readFile(t, secondDir, "data/late.txt", second.files["data/late.txt"]) // served lazily meanwhile
	select {
	case <-secondStarted:
		t.Fatal("the second layer's background fetch started while the first held the only slot")
	case <-time.After(2 * time.Second):
	}
	close(release)
	released = true
	waitState(t, c, e.dir, server.StateComplete)
	waitState(t, c, secondDir, server.StateComplete)
	for _, d := range []string{secondDir, e.dir} {
		if err := c.Unmount(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
}
