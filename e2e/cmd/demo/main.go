// Command demo shows cocoon's guest pull end to end on loopback: it starts
// a registry, cocoond and containerd, pushes a small two-layer image, pulls
// and runs it through the cocoon snapshotter, then pulls an encrypted
// eStargz version of it lazily, then plays the kata-agent against a second
// cocoond in kata-guest mode (PullImage into a bundle run by runc,
// SecureMount of a loop device), prints what happened in a few lines, and
// tears everything down. It builds nothing: `make demo` has
// already run `make build` and `make e2e-tools`. It needs root.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/docker/go-units"

	"github.com/cocoon-cc/cocoon/e2e/harness"
	"github.com/cocoon-cc/cocoon/e2e/internal/kataapi/cdhpb"
)

const greeting = "hello from cocoon"

func main() {
	var st state
	harness.RunScript("demo", true, func(ctx context.Context, s *harness.Script) error {
		return run(ctx, s, &st)
	})
	if err := st.checkCleanedUp(); err != nil {
		fmt.Fprintf(os.Stderr, "demo cleanup: %v\n", err)
		os.Exit(1)
	}
	fmt.Printf("cleaned up: %d daemons stopped, no mount left, %s removed\n", len(st.pids), st.dir)
}

// state is what the demo started, checked after cleanup.
type state struct {
	dir  string
	pids []int
}

func (st *state) checkCleanedUp() error {
	for _, pid := range st.pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("pid %d still exists after cleanup", pid)
		}
	}
	if st.dir == "" {
		return nil
	}
	if left, err := harness.MountsUnder(st.dir); err != nil || len(left) > 0 {
		return fmt.Errorf("mounts left under %s: %v %v", st.dir, left, err)
	}
	if _, err := os.Stat(st.dir); !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%s still exists after cleanup", st.dir)
	}
	return nil
}

func run(ctx context.Context, s *harness.Script, st *state) error {
	env, err := harness.New(s)
	if err != nil {
		return err
	}
	st.dir = env.Dir
	reg, err := env.StartRegistry(ctx)
	if err != nil {
		return err
	}
	signPriv, signPub, err := harness.NewSigningJWK(signingKID)
	if err != nil {
		return err
	}
	kbs, err := env.StartKBS(ctx, harness.KBSOptions{
		Policy: harness.AllowAllPolicy,
		Resources: map[string][]byte{
			"default/demo/message":  []byte(resourceText),
			"default/demo/password": []byte(secretText),
			"default/signing/demo":  signPub,
		},
	})
	if err != nil {
		return err
	}
	// A sealed secret, delivered as an ordinary file (as a Kubernetes Secret
	// volume is): only the TEE can unseal it.
	sealed, err := sealSecret(ctx, env, signPriv, "kbs:///default/demo/password")
	if err != nil {
		return err
	}
	secretVolume, secretsMount := env.Path("secret-volume"), env.Path("secrets")
	if err := os.MkdirAll(secretVolume, 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(secretVolume, "password"), []byte(sealed), 0o600); err != nil {
		return err
	}
	restPort, err := harness.FreePort()
	if err != nil {
		return err
	}
	restAddr := fmt.Sprintf("127.0.0.1:%d", restPort)
	// The image security policy and the layer key live in the KBS; cdh.toml
	// points cocoond at them (fetched at the first pull, after attestation).
	kek := make([]byte, 32)
	if _, err := rand.Read(kek); err != nil {
		return err
	}
	if err := kbs.SetResource("default/image-kek/demo", kek); err != nil {
		return err
	}
	// The lazy pull goes through a proxy that counts what the registry serves.
	proxy, err := reg.StartTamperProxy()
	if err != nil {
		return err
	}
	policy := fmt.Sprintf(`{"default":[{"type":"reject"}],"transports":{"docker":{%q:[{"type":"sigstoreSigned","keyPath":"kbs:///default/cosign-key/demo"}],%q:[{"type":"sigstoreSigned","keyPath":"kbs:///default/cosign-key/demo"}]}}}`, reg.Host+"/demo", proxy.Host+"/demo")
	if err := kbs.SetResource("default/image-policy/demo", []byte(policy)); err != nil {
		return err
	}
	cdhToml := env.Path("cdh.toml")
	if err := os.WriteFile(cdhToml, []byte(fmt.Sprintf("[kbc]\nname = \"cc_kbc\"\nurl = %q\n\n[image]\nimage_security_policy_uri = \"kbs:///default/image-policy/demo\"\n", kbs.URL)), 0o600); err != nil {
		return err
	}
	cd, err := env.StartCocoond(ctx, harness.CocoondOptions{
		InsecureRegistries: []string{reg.Host, proxy.Host},
		LogLevel:           "info",
		// Lazy pull on; no background completion, so that what the
		// registry served was served for the container.
		Config: "[lazy]\nenable = true\nbackground_completion = false\n",
		ExtraArgs: []string{"--rest-api", restAddr, "--rest-features", "all", "--kbs-url", kbs.URL, "--tee", "sample",
			"--cdh-config", cdhToml, "--secrets-mount", secretsMount, "--secrets-source", "app=" + secretVolume},
	})
	if err != nil {
		return err
	}
	frag, err := cd.ContainerdConfig(ctx)
	if err != nil {
		return err
	}
	ctrd, err := env.StartContainerd(ctx, harness.ContainerdOptions{Fragments: []string{frag}})
	if err != nil {
		return err
	}
	st.pids = []int{reg.Proc.PID(), kbs.Proc.PID(), cd.Proc.PID(), ctrd.Proc.PID()}
	fmt.Printf("started on loopback: registry %s, development KBS %s (pid %d), cocoond (pid %d, REST API %s), containerd %s (pid %d)\n",
		reg.Host, kbs.URL, kbs.Proc.PID(), cd.Proc.PID(), restAddr, strings.TrimPrefix(harness.ContainerdVersion(ctx, ctrd), "containerd "), ctrd.Proc.PID())

	plain, err := pushDemoImage(ctx, env, reg)
	if err != nil {
		return err
	}
	im, err := encryptAndSign(ctx, env, reg, kbs, plain, kek)
	if err != nil {
		return err
	}
	fmt.Printf("pushed %s: %d layers, %s, encrypted (key wrapped for kbs:///default/image-kek/demo) and signed with cosign (public key and policy in the KBS)\n",
		im.Ref, len(im.Manifest.Layers), mb(im.LayerBytes()))

	before, err := cd.Metrics(ctx)
	if err != nil {
		return err
	}
	start := time.Now()
	if _, err := ctrd.Ctr(ctx, "image", "pull", "--plain-http", "--snapshotter", "cocoon", im.Ref); err != nil {
		return err
	}
	took := time.Since(start)
	after, err := cd.Metrics(ctx)
	if err != nil {
		return err
	}
	content, err := ctrd.ContentDigests(ctx)
	if err != nil {
		return err
	}
	blobs := 0
	for _, d := range im.LayerDigests() {
		if slices.Contains(content, d) {
			blobs++
		}
	}
	var kept []string
	if slices.Contains(content, im.ManifestDigest) {
		kept = append(kept, "manifest")
	}
	if slices.Contains(content, im.Manifest.Config.Digest) {
		kept = append(kept, "config")
	}
	layers := harness.MetricSum(after, "cocoon_pull_layers_total") - harness.MetricSum(before, "cocoon_pull_layers_total")
	fetched := harness.MetricSum(after, "cocoon_pull_bytes_total") - harness.MetricSum(before, "cocoon_pull_bytes_total")
	fmt.Printf("pulled %s through cocoon in %.2f s: signature verified against the policy, %d layers fetched (%s), decrypted with the key the KBS released after attestation and verified by cocoond; %d layer blobs in containerd's content store (it holds %d blobs: %s)\n",
		im.Ref, took.Seconds(), int(layers), mb(int64(fetched)), blobs, len(content), strings.Join(kept, " and "))
	if blobs != 0 {
		return errors.New("containerd fetched layer blobs itself: the pull did not go through cocoon")
	}
	if !strings.Contains(cd.Proc.Log(), "image accepted by the image security policy") {
		return errors.New("cocoond's log does not show the image security policy accepting the image")
	}

	out, err := ctrd.Ctr(ctx, "run", "--rm", "--snapshotter", "cocoon", im.Ref, "demo-"+token())
	if err != nil {
		return err
	}
	said := strings.TrimSpace(out)
	fmt.Printf("container says: %s\n", said)
	if said != greeting {
		return fmt.Errorf("the container printed %q, want %q", said, greeting)
	}
	if err := restDemo(ctx, ctrd, im.Ref, restAddr); err != nil {
		return err
	}
	if err := secretsDemo(ctx, ctrd, im.Ref, sealed, filepath.Join(secretsMount, "app")); err != nil {
		return err
	}
	if err := scratchDemo(ctx, env, ctrd, im.Ref); err != nil {
		return err
	}
	if err := lazyDemo(ctx, env, reg, proxy, cd, ctrd); err != nil {
		return err
	}
	return kataDemo(ctx, env, st, reg, kbs, cdhToml, im)
}

// kataDemo starts a second cocoond in kata-guest mode (no containerd) and
// plays the kata-agent over ttRPC: PullImage of the signed, encrypted demo
// image into a bundle that runc runs, then SecureMount of an empty loop
// device as a LUKS2 + ext4 volume keyed by the KBS.
func kataDemo(ctx context.Context, env *harness.Env, st *state, reg *harness.Registry, kbs *harness.KBS, cdhToml string, im *harness.Image) error {
	const volumeKey = "kbs:///default/demo/volume-key"
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return err
	}
	if err := kbs.SetResource(strings.TrimPrefix(volumeKey, "kbs:///"), key); err != nil {
		return err
	}
	// Attached before cocoond starts, detached after it stopped.
	loop, err := env.NewLoopDevice(ctx, "kata-volume.img", 64<<20)
	if err != nil {
		return err
	}
	cd, err := env.StartCocoond(ctx, harness.CocoondOptions{
		Name:               "kata",
		KataGuest:          true,
		InsecureRegistries: []string{reg.Host},
		LogLevel:           "info",
		Config:             fmt.Sprintf("[attestation]\neventlog_dir = %q\nimage_security_dir = %q\n", env.Path("kata", "aael"), env.Path("kata", "image-security")),
		ExtraArgs:          []string{"--tee", "sample", "--kbs-url", kbs.URL, "--cdh-config", cdhToml},
	})
	if err != nil {
		return err
	}
	st.pids = append(st.pids, cd.Proc.PID())
	fmt.Printf("kata guest: cocoond --mode kata-guest (pid %d) serves the AA and CDH ttRPC APIs on %s and %s; no containerd\n",
		cd.Proc.PID(), filepath.Base(cd.AASocket), filepath.Base(cd.CDHSocket))
	conn, err := env.DialTTRPC(ctx, cd.CDHSocket)
	if err != nil {
		return err
	}

	bundle := env.Path("kata", "bundle")
	if err := os.MkdirAll(bundle, 0o755); err != nil {
		return err
	}
	start := time.Now()
	reply, err := cdhpb.NewImagePullServiceClient(conn).PullImage(ctx, &cdhpb.ImagePullRequest{ImageUrl: im.Ref, BundlePath: bundle})
	if err != nil {
		return fmt.Errorf("PullImage: %w", err)
	}
	took := time.Since(start)
	if reply.GetManifestDigest() != im.ManifestDigest {
		return fmt.Errorf("PullImage answered %s, the registry has %s", reply.GetManifestDigest(), im.ManifestDigest)
	}
	out, err := env.RuncRun(ctx, bundle, "demo-kata-"+token())
	if err != nil {
		return err
	}
	said := strings.TrimSpace(out)
	fmt.Printf("kata guest: PullImage(%s) into a bundle in %.2f s (signature checked, layers decrypted, manifest %.19s...); runc run says: %s\n",
		im.Ref, took.Seconds(), reply.GetManifestDigest(), said)
	if said != greeting {
		return fmt.Errorf("the bundle's container printed %q, want %q", said, greeting)
	}
	if err := syscall.Unmount(filepath.Join(bundle, "rootfs"), 0); err != nil { // as the kata-agent does
		return err
	}

	mnt := env.Path("kata", "volume")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		return err
	}
	if _, err := cdhpb.NewSecureMountServiceClient(conn).SecureMount(ctx, &cdhpb.SecureMountRequest{
		VolumeType: "block-device",
		Options:    map[string]string{"deviceId": loop.DeviceID(), "sourceType": "empty", "targetType": "fileSystem", "encryptionType": "luks2", "key": volumeKey},
		MountPoint: mnt,
	}); err != nil {
		return fmt.Errorf("SecureMount: %w", err)
	}
	marker := "emptydir-data-" + token()
	if err := os.WriteFile(filepath.Join(mnt, "data"), []byte(marker), 0o644); err != nil {
		return err
	}
	syscall.Sync()
	if err := syscall.Unmount(mnt, 0); err != nil { // as the kata-agent does
		return err
	}
	dump, err := exec.CommandContext(ctx, "cryptsetup", "luksDump", loop.Path).CombinedOutput()
	if err != nil || !strings.Contains(string(dump), "LUKS header information") {
		return fmt.Errorf("cryptsetup luksDump %s: %v: %s", loop.Path, err, dump)
	}
	raw, err := os.ReadFile(loop.File)
	if err != nil {
		return err
	}
	inBacking := strings.Contains(string(raw), marker)
	fmt.Printf("kata guest: SecureMount(block-device %s, sourceType empty, key %s) made a LUKS2 + ext4 volume (cryptsetup luksDump reads its header); a file written to it is in the backing file in plaintext: %v\n",
		loop.Path, volumeKey, inBacking)
	if inBacking {
		return errors.New("the secure-mounted volume stored plaintext")
	}
	return nil
}

// lazyDemo adds a 32 MiB layer of random data to the demo image, converts
// it to encrypted eStargz with cocoonctl convert (hello.txt prioritized),
// signs it, and pulls and runs it lazily through the counting proxy: the
// registry serves a small part of the image before the container answers.
func lazyDemo(ctx context.Context, env *harness.Env, reg *harness.Registry, proxy *harness.TamperProxy, cd *harness.Cocoond, ctrd *harness.Containerd) error {
	data := env.Path("data.tar")
	if err := harness.NewLayer().Dir("data/").StreamFile("data/random", 32<<20, func() io.Reader { return harness.RandomReader(7) }).
		WriteFile(data, harness.Uncompressed); err != nil {
		return err
	}
	src, err := reg.Push(ctx, harness.ImageSpec{Repo: "demo/hello", Tag: "big", Layers: []string{env.Path("busybox.tar"), env.Path("hello.tar"), data}, Cmd: []string{"/bin/cat", "/hello.txt"}})
	if err != nil {
		return err
	}
	cocoonctl, err := env.CocoonBinary("cocoonctl")
	if err != nil {
		return err
	}
	dir := env.Path("sign")
	if out, err := exec.CommandContext(ctx, cocoonctl, "convert", "--estargz", "--insecure", "--encrypt", "--kid", "kbs:///default/image-kek/demo",
		"--key-file", filepath.Join(dir, "kek"), "--prioritize", "/hello.txt", src.Ref, reg.Ref("demo/hello", "lazy")).CombinedOutput(); err != nil {
		return fmt.Errorf("cocoonctl convert: %w: %s", err, out)
	}
	im, err := reg.Image(ctx, "demo/hello", "lazy")
	if err != nil {
		return err
	}
	if err := cosignRun(ctx, env, dir, "sign", "--key", "demo.key", "--tlog-upload=false", "-y", "--allow-insecure-registry", "--allow-http-registry",
		proxy.Host+"/demo/hello@"+im.ManifestDigest); err != nil { // signed for the name it is pulled by
		return err
	}
	ref := proxy.Host + "/demo/hello:lazy"
	start := time.Now()
	if _, err := ctrd.Ctr(ctx, "image", "pull", "--plain-http", "--snapshotter", "cocoon", ref); err != nil {
		return err
	}
	out, err := ctrd.Ctr(ctx, "run", "--rm", "--snapshotter", "cocoon", ref, "demo-lazy-"+token())
	if err != nil {
		return err
	}
	took := time.Since(start)
	var served int64
	for _, d := range im.LayerDigests() {
		served += proxy.Forwarded(d)
	}
	said := strings.TrimSpace(out)
	fmt.Printf("pulled %s lazily (encrypted eStargz, signature checked, layer keys from the KBS, every chunk verified against its TOC) and ran it in %.2f s: "+
		"the container said %q after the registry served %s of the image's %s (%.1f%%)\n",
		ref, took.Seconds(), said, mb(served), mb(im.LayerBytes()), 100*float64(served)/float64(im.LayerBytes()))
	if said != greeting {
		return fmt.Errorf("the lazily pulled container printed %q, want %q", said, greeting)
	}
	if !strings.Contains(cd.Proc.Log(), "lazy layer mounted and committed") {
		return errors.New("cocoond's log does not show the layers mounted lazily")
	}
	return nil
}

// cosignRun runs cosign in dir with an empty key password, offline.
func cosignRun(ctx context.Context, env *harness.Env, dir string, args ...string) error {
	cmd := exec.CommandContext(ctx, env.Tool("cosign"), args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "COSIGN_PASSWORD=", "TUF_ROOT="+filepath.Join(dir, "tuf"))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("cosign %s: %w: %s", args[0], err, out)
	}
	return nil
}

// scratchDemo gives a workload an encrypted scratch volume: a random key and
// LUKS2 header held only in memory, ciphertext in a sparse file on disk.
func scratchDemo(ctx context.Context, env *harness.Env, ctrd *harness.Containerd, ref string) (err error) {
	cocoonctl, err := env.CocoonBinary("cocoonctl")
	if err != nil {
		return err
	}
	backing, mnt := env.Path("scratch.img"), env.Path("scratch")
	if out, err := exec.CommandContext(ctx, cocoonctl, "volume", "create", "--backing", backing, "--size", "128M", "--mount", mnt).CombinedOutput(); err != nil {
		return fmt.Errorf("cocoonctl volume create: %w: %s", err, out)
	}
	defer func() {
		out, derr := exec.Command(cocoonctl, "volume", "destroy", mnt).CombinedOutput()
		if derr != nil && err == nil {
			err = fmt.Errorf("cocoonctl volume destroy: %w: %s", derr, out)
		}
	}()
	marker := "scratch-data-" + token()
	if _, err := ctrd.Ctr(ctx, "run", "--rm", "--snapshotter", "cocoon",
		"--mount", "type=bind,src="+mnt+",dst=/scratch,options=rbind:rw",
		ref, "demo-scratch-"+token(), "/bin/sh", "-c", "echo "+marker+" > /scratch/data && sync"); err != nil {
		return err
	}
	got, err := os.ReadFile(filepath.Join(mnt, "data"))
	if err != nil {
		return err
	}
	syscall.Sync()
	raw, err := os.ReadFile(backing)
	if err != nil {
		return err
	}
	inBacking := strings.Contains(string(raw), marker)
	fmt.Printf("workload wrote %q to an encrypted scratch volume (LUKS2, key and header in memory); the 128 MB backing file contains it in plaintext: %v\n",
		strings.TrimSpace(string(got)), inBacking)
	if inBacking || strings.TrimSpace(string(got)) != marker {
		return fmt.Errorf("scratch volume: read back %q, plaintext in backing file: %v", got, inBacking)
	}
	return nil
}

const (
	secretText = "s3cret-database-password"
	signingKID = "kbs:///default/signing/demo"
)

// sealSecret seals a vault secret with cocoonctl, as an operator would.
func sealSecret(ctx context.Context, env *harness.Env, signingJWK []byte, uri string) (string, error) {
	cocoonctl, err := env.CocoonBinary("cocoonctl")
	if err != nil {
		return "", err
	}
	jwk := env.Path("signing.jwk")
	if err := os.WriteFile(jwk, signingJWK, 0o600); err != nil {
		return "", err
	}
	out, err := exec.CommandContext(ctx, cocoonctl, "secret", "seal", "vault", "--resource-uri", uri,
		"--signing-kid", signingKID, "--signing-jwk-path", jwk).Output()
	if err != nil {
		return "", fmt.Errorf("cocoonctl secret seal: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// secretsDemo runs a workload that bind-mounts the secrets filesystem and
// reads the unsealed value of a sealed secret.
func secretsDemo(ctx context.Context, ctrd *harness.Containerd, ref, sealed, dir string) error {
	out, err := ctrd.Ctr(ctx, "run", "--rm", "--snapshotter", "cocoon",
		"--mount", "type=bind,src="+dir+",dst=/secrets,options=rbind:ro",
		ref, "demo-secret-"+token(), "/bin/cat", "/secrets/password")
	if err != nil {
		return err
	}
	got := strings.TrimSpace(out)
	short := sealed
	if len(short) > 48 {
		short = short[:48] + "..."
	}
	fmt.Printf("sealed secret on disk: %s\n", short)
	fmt.Printf("workload read /secrets/password through cocoon's secrets filesystem: %q\n", got)
	if got != secretText {
		return fmt.Errorf("the workload read %q, want %q", got, secretText)
	}
	return nil
}

const resourceText = "a secret released by the KBS after attestation"

// restDemo runs a workload that reads a KBS resource and attestation
// evidence over the guest REST API, as a pod in a TEE would.
func restDemo(ctx context.Context, ctrd *harness.Containerd, ref, restAddr string) error {
	script := fmt.Sprintf("wget -qO- http://%[1]s/cdh/resource/default/demo/message; echo; wget -qO- 'http://%[1]s/aa/evidence?runtime_data=demo-nonce'", restAddr)
	out, err := ctrd.Ctr(ctx, "run", "--rm", "--net-host", "--snapshotter", "cocoon", ref, "demo-rest-"+token(), "/bin/sh", "-c", script)
	if err != nil {
		return err
	}
	resource, evidence, _ := strings.Cut(strings.TrimSpace(out), "\n")
	fmt.Printf("workload read over the REST API: /cdh/resource/default/demo/message = %q\n", resource)
	fmt.Printf("workload read over the REST API: /aa/evidence = %s\n", evidence)
	if resource != resourceText {
		return fmt.Errorf("the workload read %q from /cdh/resource, want %q", resource, resourceText)
	}
	if !strings.Contains(evidence, `"report_data"`) {
		return fmt.Errorf("the workload got no evidence: %q", evidence)
	}
	return nil
}

// encryptAndSign encrypts the demo image with cocoonctl encrypt (layer keys
// wrapped under kek for the attestation-agent key provider), signs the
// result with cosign (a key made here, offline), and puts the public key in
// the KBS, where the policy names it.
func encryptAndSign(ctx context.Context, env *harness.Env, reg *harness.Registry, kbs *harness.KBS, plain *harness.Image, kek []byte) (*harness.Image, error) {
	cocoonctl, err := env.CocoonBinary("cocoonctl")
	if err != nil {
		return nil, err
	}
	dir := env.Path("sign")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	kekFile := filepath.Join(dir, "kek")
	if err := os.WriteFile(kekFile, kek, 0o600); err != nil {
		return nil, err
	}
	dst := reg.Ref("demo/hello", "encrypted")
	if out, err := exec.CommandContext(ctx, cocoonctl, "encrypt", "--insecure", "--kid", "kbs:///default/image-kek/demo", "--key-file", kekFile, plain.Ref, dst).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("cocoonctl encrypt: %w: %s", err, out)
	}
	im, err := reg.Image(ctx, "demo/hello", "encrypted")
	if err != nil {
		return nil, err
	}
	cosign := func(args ...string) error { return cosignRun(ctx, env, dir, args...) }
	if err := cosign("generate-key-pair", "--output-key-prefix", "demo"); err != nil {
		return nil, err
	}
	if err := cosign("sign", "--key", "demo.key", "--tlog-upload=false", "-y", "--allow-insecure-registry", "--allow-http-registry",
		reg.Host+"/demo/hello@"+im.ManifestDigest); err != nil {
		return nil, err
	}
	pub, err := os.ReadFile(filepath.Join(dir, "demo.pub"))
	if err != nil {
		return nil, err
	}
	return im, kbs.SetResource("default/cosign-key/demo", pub)
}

// pushDemoImage pushes busybox plus a layer with /hello.txt, whose
// default command prints the file.
func pushDemoImage(ctx context.Context, env *harness.Env, reg *harness.Registry) (*harness.Image, error) {
	bb, err := harness.BusyboxLayer()
	if err != nil {
		return nil, err
	}
	base, top := env.Path("busybox.tar"), env.Path("hello.tar")
	if err := bb.WriteFile(base, harness.Uncompressed); err != nil {
		return nil, err
	}
	if err := harness.NewLayer().File("hello.txt", []byte(greeting+"\n"), 0o644).WriteFile(top, harness.Uncompressed); err != nil {
		return nil, err
	}
	return reg.Push(ctx, harness.ImageSpec{Repo: "demo/hello", Tag: "v1", Layers: []string{base, top}, Cmd: []string{"/bin/cat", "/hello.txt"}})
}

func mb(n int64) string { return units.HumanSize(float64(n)) }

func token() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
