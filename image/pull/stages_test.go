package pull

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"go.uber.org/goleak"

	"github.com/cocoon-cc/cocoon/image/decrypt"
	"github.com/cocoon-cc/cocoon/image/layer"
	"github.com/cocoon-cc/cocoon/image/registry"
	"github.com/cocoon-cc/cocoon/image/unpack"
	"github.com/cocoon-cc/cocoon/internal/regtest"
)

// stageLayer is one layer blob of the stage tests, plain and encrypted.
type stageLayer struct {
	tar       []byte
	plain     ocispec.Descriptor
	encrypted ocispec.Descriptor
}

// gzipBlob compresses tar; a layer of a few MiB fills every stage's
// buffers several times over.
func gzipBlob(t *testing.T, tar []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	if _, err := zw.Write(tar); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func randomBody(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func ociDesc(d v1.Descriptor) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: string(d.MediaType), Digest: digest.Digest(d.Digest.String()), Size: d.Size, Annotations: d.Annotations}
}

// pushStageLayers pushes one image whose layers are the given gzip blobs
// as they are (corrupt ones included), and its encryption; it returns the
// repository and each layer's plain and encrypted descriptor.
func pushStageLayers(t *testing.T, reg *regtest.Registry, kek []byte, kid string, tars, blobs [][]byte) (name.Repository, []stageLayer) {
	t.Helper()
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	for _, b := range blobs {
		var err error
		if img, err = mutate.AppendLayers(img, static.NewLayer(b, types.OCILayer)); err != nil {
			t.Fatal(err)
		}
	}
	const repoName = "stages/test"
	tag, err := name.NewTag(reg.Host+"/"+repoName+":plain", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(tag, img); err != nil {
		t.Fatal(err)
	}
	encRef, err := name.ParseReference(pushEncrypted(t, reg, repoName, img, kek, kid), name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	encImg, err := remote.Image(encRef)
	if err != nil {
		t.Fatal(err)
	}
	pm, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	em, err := encImg.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	var out []stageLayer
	for i := range blobs {
		out = append(out, stageLayer{tar: tars[i], plain: ociDesc(pm.Layers[i]), encrypted: ociDesc(em.Layers[i])})
	}
	return tag.Repository, out
}

// withHMAC returns desc with the HMAC in its public options replaced.
func withHMAC(t *testing.T, desc ocispec.Descriptor) ocispec.Descriptor {
	t.Helper()
	raw, err := base64.StdEncoding.DecodeString(desc.Annotations[decrypt.AnnotationPubOpts])
	if err != nil {
		t.Fatal(err)
	}
	var pub map[string]any
	if err := json.Unmarshal(raw, &pub); err != nil {
		t.Fatal(err)
	}
	pub["hmac"] = base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, decrypt.HMACSize))
	if raw, err = json.Marshal(pub); err != nil {
		t.Fatal(err)
	}
	ann := map[string]string{}
	for k, v := range desc.Annotations {
		ann[k] = v
	}
	ann[decrypt.AnnotationPubOpts] = base64.StdEncoding.EncodeToString(raw)
	desc.Annotations = ann
	return desc
}

// stagingName matches the random part of a staging directory in messages.
var stagingName = regexp.MustCompile(`layer-[0-9]+`)

// TestStageFailures: a failure in any stage of a layer pull (network,
// decryption, decompression, unpacking) fails it with the error text of
// the serial pull (every stage in one goroutine, as before the pipeline),
// and leaves nothing staged and no goroutine behind.
func TestStageFailures(t *testing.T) {
	reg := regtest.Start(t)
	kek := make([]byte, decrypt.KEKSize)
	if _, err := rand.Read(kek); err != nil {
		t.Fatal(err)
	}
	const kid = "kbs:///default/stages/kek"

	big := randomBody(t, 3<<20)
	good := regtest.Tar(t, regtest.Entry{Name: "a", Body: big}, regtest.Entry{Name: "b", Body: "cocoon"})
	unsafeTar := regtest.Tar(t, regtest.Entry{Name: "../escape", Body: "x"}, regtest.Entry{Name: "a", Body: big})
	goodGz := gzipBlob(t, good)
	truncated := goodGz[:len(goodGz)*2/3]
	badCRC := bytes.Clone(goodGz)
	badCRC[len(badCRC)-5] ^= 0xff // the gzip trailer: CRC-32, then size
	tars := [][]byte{good, good, good, unsafeTar}
	repo, ls := pushStageLayers(t, reg, kek, kid, tars, [][]byte{goodGz, truncated, badCRC, gzipBlob(t, unsafeTar)})
	okL, truncL, crcL, unsafeL := ls[0], ls[1], ls[2], ls[3]
	resources := benchKEK{kid: kid, kek: kek}
	ignore := goleak.IgnoreCurrent()

	type tc struct {
		name   string
		desc   ocispec.Descriptor
		diffID digest.Digest
		tamper bool // the registry flips a byte in the middle of the blob
		check  func(error) bool
	}
	var cases []tc
	for _, enc := range []bool{false, true} {
		pick := func(l stageLayer) ocispec.Descriptor {
			if enc {
				return l.encrypted
			}
			return l.plain
		}
		kind := map[bool]string{false: "plain", true: "encrypted"}[enc]
		cases = append(cases,
			tc{kind + "/bad diff ID", pick(okL), digest.FromString("other"), false, func(err error) bool {
				var dm *layer.DigestMismatchError
				return errors.As(err, &dm) && dm.Kind == layer.KindDiffID
			}},
			// The flipped byte is in the middle of random data, which
			// gzip stores: the gzip checksum may fail before the digest.
			tc{kind + "/bad blob digest", pick(okL), digest.FromBytes(okL.tar), true, func(err error) bool {
				return errdefs.IsFailedPrecondition(err) || errors.Is(err, gzip.ErrChecksum)
			}},
			tc{kind + "/truncated gzip", pick(truncL), digest.FromBytes(truncL.tar), false, func(err error) bool {
				return errors.Is(err, io.ErrUnexpectedEOF)
			}},
			tc{kind + "/bad gzip checksum", pick(crcL), digest.FromBytes(crcL.tar), false, func(err error) bool {
				return errors.Is(err, gzip.ErrChecksum)
			}},
			tc{kind + "/unsafe entry before the bulk of the layer", pick(unsafeL), digest.FromBytes(unsafeL.tar), false, func(err error) bool {
				return errors.Is(err, unpack.ErrUnsafeEntry)
			}},
		)
	}
	cases = append(cases, tc{"encrypted/bad HMAC", withHMAC(t, okL.encrypted), digest.FromBytes(okL.tar), false, func(err error) bool {
		return errors.Is(err, decrypt.ErrHMACMismatch)
	}})

	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.tamper {
				reg.Tamper.Store(c.desc.Digest.Encoded())
				defer reg.Tamper.Store("")
			}
			var msgs [2]string
			for i, serial := range []bool{true, false} {
				err := stageFetch(context.Background(), t, reg, repo, c.desc, c.diffID, resources, serial)
				if err == nil || !c.check(err) {
					t.Fatalf("serial=%v: error %v is not the expected kind", serial, err)
				}
				msgs[i] = stagingName.ReplaceAllString(err.Error(), "layer-N")
			}
			t.Log(msgs[0])
			if msgs[0] != msgs[1] {
				t.Errorf("pipelined pull fails with\n  %s\nthe serial one with\n  %s", msgs[1], msgs[0])
			}
			goleak.VerifyNone(t, ignore)
		})
	}

	t.Run("success", func(t *testing.T) {
		for _, d := range []ocispec.Descriptor{okL.plain, okL.encrypted} {
			if err := stageFetch(context.Background(), t, reg, repo, d, digest.FromBytes(okL.tar), resources, false); err != nil {
				t.Fatal(err)
			}
		}
		goleak.VerifyNone(t, ignore)
	})

	// stall makes the registry send the first n bytes of d's blob, then
	// nothing until the client goes away; sent is closed once they are.
	stall := func(t *testing.T, d ocispec.Descriptor, n int) (sent chan struct{}) {
		blob := blobBytes(t, reg, repo, d)
		sent = make(chan struct{})
		hook := func(w http.ResponseWriter, r *http.Request) bool {
			if filepath.Base(r.URL.Path) != d.Digest.String() {
				return false
			}
			w.Header().Set("Content-Length", strconv.Itoa(len(blob)))
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write(blob[:n])
			w.(http.Flusher).Flush()
			close(sent)
			<-r.Context().Done()
			return true
		}
		reg.Hook.Store(&hook)
		t.Cleanup(func() { reg.Hook.Store(nil) })
		return sent
	}

	// A pull cancelled while the registry is in the middle of the blob
	// fails with the context's error.
	for _, d := range []ocispec.Descriptor{okL.plain, okL.encrypted} {
		t.Run("cancelled/"+d.MediaType, func(t *testing.T) {
			halfway := stall(t, d, int(d.Size/2))
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go func() {
				<-halfway
				cancel()
			}()
			err := stageFetch(ctx, t, reg, repo, d, digest.FromBytes(okL.tar), resources, false)
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("error = %v, want context.Canceled", err)
			}
			goleak.VerifyNone(t, ignore)
		})
	}

	// A layer refused by the unpacker while the registry stalls fails
	// without waiting for the rest of the blob (else the test hangs): the
	// request is cancelled before the stages are stopped. The registry
	// stops after a few stage buffers' worth, so that the decompression
	// stage is inside a read waiting for the network.
	for _, d := range []ocispec.Descriptor{unsafeL.plain, unsafeL.encrypted} {
		t.Run("refused while the registry stalls/"+d.MediaType, func(t *testing.T) {
			stall(t, d, 2*stageBufferSize+stageBufferSize/3)
			err := stageFetch(context.Background(), t, reg, repo, d, digest.FromBytes(unsafeL.tar), resources, false)
			if !errors.Is(err, unpack.ErrUnsafeEntry) {
				t.Fatalf("error = %v, want unpack.ErrUnsafeEntry", err)
			}
			goleak.VerifyNone(t, ignore)
		})
	}
}

// stageFetch runs one layer fetch with a fresh Puller and transport, checks
// that a failed one left nothing in staging, discards a successful one, and
// closes everything so that goroutines can be counted afterwards.
func stageFetch(ctx context.Context, t *testing.T, reg *regtest.Registry, repo name.Repository, desc ocispec.Descriptor, diffID digest.Digest, res decrypt.ResourceGetter, serial bool) error {
	t.Helper()
	tr := http.DefaultTransport.(*http.Transport).Clone()
	defer tr.CloseIdleConnections()
	staging := filepath.Join(t.TempDir(), "staging")
	p, err := New(Options{
		Registry:   registry.New(registry.Options{Insecure: []string{reg.Host}, Retries: 1, RetryBackoff: time.Millisecond, Transport: tr}),
		StagingDir: staging,
		Decrypt:    decrypt.Options{Resources: res},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	p.serial = serial
	st, err := p.fetch(ctx, repo, desc, diffID, diffID)
	if err == nil {
		discard(t, st)
	}
	if e := entries(t, staging); len(e) != 0 {
		t.Errorf("serial=%v: staging holds %d entries after the pull (error %v)", serial, len(e), err)
	}
	return err
}

// blobBytes fetches a blob as the registry serves it.
func blobBytes(t *testing.T, reg *regtest.Registry, repo name.Repository, desc ocispec.Descriptor) []byte {
	t.Helper()
	tr := http.DefaultTransport.(*http.Transport).Clone()
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Get(fmt.Sprintf("http://%s/v2/%s/blobs/%s", reg.Host, repo.RepositoryStr(), desc.Digest))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET blob: %v %v", resp.Status, err)
	}
	return b
}
