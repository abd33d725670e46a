package decrypt_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	mrand "math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/containerd/errdefs"
	"github.com/containers/ocicrypt/blockcipher"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/cocoon-cc/cocoon/image/decrypt"
)

const lazyKid = "kbs:///default/lazy/1"

// ociEncrypt encrypts plain with ocicrypt's own AES_256_CTR_HMAC_SHA256
// (github.com/containers/ocicrypt/blockcipher). With key and nonce nil the
// handler generates them, as `ctr images encrypt` and skopeo do; otherwise
// they are given to the cipher, as ocicrypt's init accepts, to reach chosen
// counter values.
func ociEncrypt(tb testing.TB, plain, key, nonce []byte) ([]byte, blockcipher.LayerBlockCipherOptions) {
	tb.Helper()
	var (
		r   io.Reader
		fin blockcipher.Finalizer
		err error
	)
	if key == nil {
		h, herr := blockcipher.NewLayerBlockCipherHandler()
		if herr != nil {
			tb.Fatal(herr)
		}
		r, fin, err = h.Encrypt(bytes.NewReader(plain), blockcipher.AES256CTR)
	} else {
		c, cerr := blockcipher.NewAESCTRLayerBlockCipher(256)
		if cerr != nil {
			tb.Fatal(cerr)
		}
		r, fin, err = c.Encrypt(bytes.NewReader(plain), blockcipher.LayerBlockCipherOptions{
			Private: blockcipher.PrivateLayerBlockCipherOptions{
				SymmetricKey:  bytes.Clone(key),
				CipherOptions: map[string][]byte{"nonce": bytes.Clone(nonce)},
			},
		})
	}
	if err != nil {
		tb.Fatal(err)
	}
	ct, err := io.ReadAll(r)
	if err != nil {
		tb.Fatal(err)
	}
	lbco, err := fin()
	if err != nil {
		tb.Fatal(err)
	}
	lbco.Public.CipherType = blockcipher.AES256CTR
	lbco.Private.Digest = digest.FromBytes(plain)
	return ct, lbco
}

// lazyDesc wraps the private options for the attestation-agent provider
// with kek at lazyKid and returns the descriptor a registry would list.
func lazyDesc(tb testing.TB, ct []byte, lbco blockcipher.LayerBlockCipherOptions, kek []byte) ocispec.Descriptor {
	tb.Helper()
	plbco, err := json.Marshal(lbco.Private)
	if err != nil {
		tb.Fatal(err)
	}
	pub, err := json.Marshal(lbco.Public)
	if err != nil {
		tb.Fatal(err)
	}
	return rawDesc(tb, ct, plbco, pub, kek)
}

func rawDesc(tb testing.TB, ct, plbco, pub, kek []byte) ocispec.Descriptor {
	tb.Helper()
	packet, err := decrypt.WrapKey(kek, lazyKid, plbco)
	if err != nil {
		tb.Fatal(err)
	}
	return ocispec.Descriptor{
		MediaType: "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
		Digest:    digest.FromBytes(ct),
		Size:      int64(len(ct)),
		Annotations: map[string]string{
			decrypt.AnnotationAttestationAgent: base64.StdEncoding.EncodeToString(packet),
			decrypt.AnnotationPubOpts:          base64.StdEncoding.EncodeToString(pub),
		},
	}
}

func randomBytes(tb testing.TB, n int) []byte {
	tb.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		tb.Fatal(err)
	}
	return b
}

func TestUnwrapLayerThroughKBS(t *testing.T) {
	kek := randomKey(t)
	plain := randomBytes(t, 1000)
	ct, lbco := ociEncrypt(t, plain, nil, nil)
	desc := lazyDesc(t, ct, lbco, kek)
	c := newKBS(t, map[string][]byte{"default/lazy/1": kek})
	k, err := decrypt.UnwrapLayer(context.Background(), desc, decrypt.Options{Resources: c})
	if err != nil {
		t.Fatal(err)
	}
	defer k.Clear()
	if k.Cipher() != decrypt.CipherAES256CTRHMACSHA256 || k.Layer() != desc.Digest || k.Size() != desc.Size {
		t.Fatalf("cipher %s layer %s size %d", k.Cipher(), k.Layer(), k.Size())
	}
	if !bytes.Equal(k.Nonce(), lbco.Private.CipherOptions["nonce"]) {
		t.Fatalf("nonce %x, want %x", k.Nonce(), lbco.Private.CipherOptions["nonce"])
	}
	if !bytes.Equal(k.ExpectedHMAC(), lbco.Public.Hmac) {
		t.Fatal("expected HMAC differs from pubopts")
	}
	if k.PlainDigest() != digest.FromBytes(plain) {
		t.Fatalf("plain digest %s", k.PlainDigest())
	}
	// Accessors hand out copies.
	k.Nonce()[0] ^= 1
	k.ExpectedHMAC()[0] ^= 1
	if !bytes.Equal(k.Nonce(), lbco.Private.CipherOptions["nonce"]) || !bytes.Equal(k.ExpectedHMAC(), lbco.Public.Hmac) {
		t.Fatal("accessor returned internal state")
	}
}

// TestUnwrapLayerPublicNonce: ocicrypt's GetOpt takes the nonce from the
// public options when they have one; so does UnwrapLayer.
func TestUnwrapLayerPublicNonce(t *testing.T) {
	kek := randomKey(t)
	plain := randomBytes(t, 100)
	ct, lbco := ociEncrypt(t, plain, nil, nil)
	pubNonce := randomBytes(t, decrypt.NonceSize)
	lbco.Public.CipherOptions = map[string][]byte{"nonce": pubNonce}
	k, err := decrypt.UnwrapLayer(context.Background(), lazyDesc(t, ct, lbco, kek), decrypt.Options{Resources: fakeResources{lazyKid: kek}})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(k.Nonce(), pubNonce) {
		t.Fatalf("nonce %x, want the public one %x", k.Nonce(), pubNonce)
	}
}

func TestUnwrapLayerRejects(t *testing.T) {
	kek := randomKey(t)
	ct, lbco := ociEncrypt(t, randomBytes(t, 100), nil, nil)
	good, err := json.Marshal(lbco.Private)
	if err != nil {
		t.Fatal(err)
	}
	goodPub, err := json.Marshal(lbco.Public)
	if err != nil {
		t.Fatal(err)
	}
	b64 := base64.StdEncoding.EncodeToString
	hmac := b64(lbco.Public.Hmac)
	key := b64(lbco.Private.SymmetricKey)
	nonce := b64(lbco.Private.CipherOptions["nonce"])
	dig := lbco.Private.Digest.String()
	tests := []struct {
		name       string
		plbco, pub string
		modify     func(d *ocispec.Descriptor)
		want       string
		wantIs     error
	}{
		{name: "AES-128 key", plbco: `{"symkey":"` + b64(make([]byte, 16)) + `","digest":"` + dig + `","cipheroptions":{"nonce":"` + nonce + `"}}`, want: "symkey is 16 bytes"},
		{name: "no key", plbco: `{"digest":"` + dig + `","cipheroptions":{"nonce":"` + nonce + `"}}`, want: "symkey is 0 bytes"},
		{name: "12-byte nonce", plbco: `{"symkey":"` + key + `","digest":"` + dig + `","cipheroptions":{"nonce":"` + b64(make([]byte, 12)) + `"}}`, want: "nonce is 12 bytes"},
		{name: "no nonce", plbco: `{"symkey":"` + key + `","digest":"` + dig + `","cipheroptions":{}}`, want: "nonce is 0 bytes"},
		{name: "bad plain digest", plbco: `{"symkey":"` + key + `","digest":"sha256:00","cipheroptions":{"nonce":"` + nonce + `"}}`, want: "digest"},
		{name: "GCM cipher", pub: `{"cipher":"AES_256_GCM","hmac":"` + hmac + `","cipheroptions":{}}`, want: "unsupported cipher", wantIs: errdefs.ErrNotImplemented},
		{name: "no cipher", pub: `{"hmac":"` + hmac + `","cipheroptions":{}}`, want: "unsupported cipher", wantIs: errdefs.ErrNotImplemented},
		{name: "short HMAC", pub: `{"cipher":"AES_256_CTR_HMAC_SHA256","hmac":"` + b64(make([]byte, 20)) + `","cipheroptions":{}}`, want: "HMAC is 20 bytes"},
		{name: "no HMAC", pub: `{"cipher":"AES_256_CTR_HMAC_SHA256","cipheroptions":{}}`, want: "HMAC is 0 bytes"},
		{name: "short public nonce", pub: `{"cipher":"AES_256_CTR_HMAC_SHA256","hmac":"` + hmac + `","cipheroptions":{"nonce":"` + b64(make([]byte, 8)) + `"}}`, want: "nonce is 8 bytes"},
		{name: "plain media type", modify: func(d *ocispec.Descriptor) { d.MediaType = "application/vnd.oci.image.layer.v1.tar+gzip" }, want: "not encrypted"},
		{name: "no pubopts", modify: func(d *ocispec.Descriptor) { delete(d.Annotations, decrypt.AnnotationPubOpts) }, want: "pubopts"},
		{name: "no wrapped key", modify: func(d *ocispec.Descriptor) { delete(d.Annotations, decrypt.AnnotationAttestationAgent) }, want: "no supported wrapped key", wantIs: errdefs.ErrNotImplemented},
		{name: "bad blob digest", modify: func(d *ocispec.Descriptor) { d.Digest = "sha256:zz" }, want: "blob digest", wantIs: errdefs.ErrInvalidArgument},
		{name: "negative size", modify: func(d *ocispec.Descriptor) { d.Size = -1 }, want: "negative size", wantIs: errdefs.ErrInvalidArgument},
		{name: "wrong KEK", modify: func(d *ocispec.Descriptor) {
			other := rawDesc(t, ct, good, goodPub, randomKey(t))
			d.Annotations[decrypt.AnnotationAttestationAgent] = other.Annotations[decrypt.AnnotationAttestationAgent]
		}, want: "no wrapped key could be opened"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			plbco, pub := good, goodPub
			if tt.plbco != "" {
				plbco = []byte(tt.plbco)
			}
			if tt.pub != "" {
				pub = []byte(tt.pub)
			}
			d := rawDesc(t, ct, plbco, pub, kek)
			if tt.modify != nil {
				tt.modify(&d)
			}
			k, err := decrypt.UnwrapLayer(context.Background(), d, decrypt.Options{Resources: fakeResources{lazyKid: kek}})
			if err == nil {
				k.Clear()
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Fatalf("err = %v, want it to wrap %v", err, tt.wantIs)
			}
			if strings.Contains(err.Error(), key) {
				t.Fatal("error quotes the layer key")
			}
		})
	}
}

// TestUnwrapLayerVector unwraps coco_keyprovider's sample annotation (see
// testdata/README.md) through a layer descriptor.
func TestUnwrapLayerVector(t *testing.T) {
	var v map[string]json.RawMessage
	if err := json.Unmarshal(readVector(t, "sample-key-unwrap-vector.json"), &v); err != nil {
		t.Fatal(err)
	}
	var kekHex, annotation, plbco string
	for name, dst := range map[string]*string{
		"kek_hex": &kekHex, "layer_annotation_value_(base64 std of packet JSON, as in manifest)": &annotation,
		"decrypted_PrivateLayerBlockCipherOptions_json": &plbco,
	} {
		if err := json.Unmarshal(v[name], dst); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	var priv blockcipher.PrivateLayerBlockCipherOptions
	if err := json.Unmarshal([]byte(plbco), &priv); err != nil {
		t.Fatal(err)
	}
	kek, err := hex.DecodeString(kekHex)
	if err != nil {
		t.Fatal(err)
	}
	pub := `{"cipher":"AES_256_CTR_HMAC_SHA256","hmac":"` + base64.StdEncoding.EncodeToString(make([]byte, 32)) + `","cipheroptions":{}}`
	desc := ocispec.Descriptor{
		MediaType: "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
		Digest:    digest.FromString("not read"),
		Annotations: map[string]string{
			decrypt.AnnotationAttestationAgent: annotation,
			decrypt.AnnotationPubOpts:          base64.StdEncoding.EncodeToString([]byte(pub)),
		},
	}
	k, err := decrypt.UnwrapLayer(context.Background(), desc, decrypt.Options{Resources: fakeResources{"kbs:///default/key/1": kek}})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(k.Nonce(), priv.CipherOptions["nonce"]) || k.PlainDigest() != priv.Digest {
		t.Fatalf("nonce %x digest %s, want %x %s", k.Nonce(), k.PlainDigest(), priv.CipherOptions["nonce"], priv.Digest)
	}
}

// sliceSource is a RangeSource over an in-memory blob, with
// bytes.Reader's ReadAt semantics.
type sliceSource []byte

func (s sliceSource) ReadAt(_ context.Context, p []byte, off int64) (int, error) {
	return bytes.NewReader(s).ReadAt(p, off)
}

func (s sliceSource) Size() int64 { return int64(len(s)) }

// lazyLayer is an ocicrypt-encrypted blob with its plaintext and the
// decrypting view of it.
type lazyLayer struct {
	plain, ct []byte
	lbco      blockcipher.LayerBlockCipherOptions
	key       *decrypt.LayerKey
	ra        *decrypt.ReaderAt
}

func newLazyLayer(tb testing.TB, plain, key, nonce []byte) lazyLayer {
	tb.Helper()
	kek := randomKey(tb)
	ct, lbco := ociEncrypt(tb, plain, key, nonce)
	k, err := decrypt.UnwrapLayer(context.Background(), lazyDesc(tb, ct, lbco, kek), decrypt.Options{Resources: fakeResources{lazyKid: kek}})
	if err != nil {
		tb.Fatal(err)
	}
	ra, err := k.NewReaderAt(sliceSource(ct))
	if err != nil {
		tb.Fatal(err)
	}
	return lazyLayer{plain: plain, ct: ct, lbco: lbco, key: k, ra: ra}
}

// checkRange reads [off, off+n) and compares with the plaintext and with
// io.ReaderAt's semantics (as bytes.Reader has them).
func (l lazyLayer) checkRange(tb testing.TB, off int64, n int) {
	tb.Helper()
	p := make([]byte, n)
	got, err := l.ra.ReadAt(context.Background(), p, off)
	wantP := make([]byte, n)
	want, wantErr := bytes.NewReader(l.plain).ReadAt(wantP, off)
	if got != want || !errors.Is(err, wantErr) && err != wantErr {
		tb.Fatalf("ReadAt(len %d, off %d) of %d bytes = %d, %v; want %d, %v", n, off, len(l.plain), got, err, want, wantErr)
	}
	if got > 0 && !bytes.Equal(p[:got], l.plain[off:off+int64(got)]) {
		tb.Fatalf("ReadAt(len %d, off %d) of %d bytes: wrong plaintext", n, off, len(l.plain))
	}
}

// ociStreamDecrypt decrypts the whole blob with ocicrypt's own reader,
// which also checks the HMAC at end of stream.
func ociStreamDecrypt(tb testing.TB, ct []byte, lbco blockcipher.LayerBlockCipherOptions) ([]byte, error) {
	tb.Helper()
	h, err := blockcipher.NewLayerBlockCipherHandler()
	if err != nil {
		tb.Fatal(err)
	}
	r, _, err := h.Decrypt(bytes.NewReader(ct), blockcipher.LayerBlockCipherOptions{Public: lbco.Public, Private: lbco.Private})
	if err != nil {
		tb.Fatal(err)
	}
	return io.ReadAll(r)
}

func edgeOffsets(size int64) []int64 {
	offs := []int64{0, 1, 15, 16, 17, 31, 32, 33, 4095, 4096, 4097}
	for _, d := range []int64{-33, -17, -16, -15, -1, 0, 1, 100} {
		offs = append(offs, size+d)
	}
	return offs
}

func TestReaderAtMatchesOcicrypt(t *testing.T) {
	gz := makeLayer(t, true, 4, 20000)
	for _, tc := range []struct {
		name  string
		plain []byte
	}{
		{"1 byte", randomBytes(t, 1)},
		{"15 bytes", randomBytes(t, 15)},
		{"one block", randomBytes(t, 16)},
		{"17 bytes", randomBytes(t, 17)},
		{"gzip layer", gz.blob},
		{"1 MiB + 7", randomBytes(t, 1<<20+7)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLazyLayer(t, tc.plain, nil, nil)
			if len(l.ct) != len(tc.plain) || l.ra.Size() != int64(len(l.ct)) {
				t.Fatalf("ciphertext %d bytes, Size %d, plaintext %d: ocicrypt's layout changed", len(l.ct), l.ra.Size(), len(tc.plain))
			}
			// ocicrypt's own stream decryption, byte for byte.
			whole := make([]byte, l.ra.Size())
			if n, err := l.ra.ReadAt(context.Background(), whole, 0); n != len(whole) || err != nil {
				t.Fatalf("whole blob: %d, %v", n, err)
			}
			oci, err := ociStreamDecrypt(t, l.ct, l.lbco)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(whole, oci) || !bytes.Equal(whole, tc.plain) {
				t.Fatal("whole-blob ReadAt differs from ocicrypt's stream decryption")
			}
			size := int64(len(tc.plain))
			lengths := []int{0, 1, 15, 16, 17, 33, 4096, int(size) - 1, int(size), int(size) + 1}
			for _, off := range edgeOffsets(size) {
				if off < 0 {
					continue
				}
				for _, n := range lengths {
					if n >= 0 {
						l.checkRange(t, off, n)
					}
				}
			}
			for range 300 {
				off := mrand.Int64N(size + 20)
				l.checkRange(t, off, mrand.IntN(int(min(size, 200000))+32))
			}
		})
	}
}

// TestReaderAtCounterCarry: the counter for offset o is the nonce plus
// o/16 in 128 bits, so nonces whose low bytes are all 0xff carry into the
// high half (and the all-0xff one wraps to zero) within the first blocks.
// ReadAt must agree with ocicrypt's encryption and with a stream
// decryption (cipher.NewCTR) at every offset.
func TestReaderAtCounterCarry(t *testing.T) {
	key := randomKey(t)
	for _, nonceHex := range []string{
		"0000000000000000ffffffffffffffff",
		"00000000000000fffffffffffffffffd",
		"0123456789abcdeeffffffffffffffff",
		"ffffffffffffffffffffffffffffffff",
		"fffffffffffffffffffffffffffffffe",
	} {
		t.Run(nonceHex, func(t *testing.T) {
			nonce, err := hex.DecodeString(nonceHex)
			if err != nil {
				t.Fatal(err)
			}
			plain := randomBytes(t, 16*7+5)
			l := newLazyLayer(t, plain, key, nonce)
			if !bytes.Equal(ctrXOR(t, key, nonce, l.ct), plain) {
				t.Fatal("stream decryption with cipher.NewCTR differs from the plaintext")
			}
			for off := range int64(len(plain)) + 2 {
				for _, n := range []int{1, 15, 16, 17, 48, len(plain)} {
					l.checkRange(t, off, n)
				}
			}
		})
	}
}

// errSource fails every read after the first good bytes; truncated
// claims more bytes than it has.
type errSource struct {
	sliceSource
	err error
}

func (s errSource) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	n, _ := s.sliceSource.ReadAt(ctx, p[:min(len(p), 5)], off)
	return n, s.err
}

type truncated struct {
	sliceSource
	size int64
}

func (s truncated) Size() int64 { return s.size }

func TestReaderAtSourceErrors(t *testing.T) {
	l := newLazyLayer(t, randomBytes(t, 1000), nil, nil)
	ctx := context.Background()
	t.Run("source error", func(t *testing.T) {
		boom := errors.New("registry said 503")
		ra, err := l.key.NewReaderAt(errSource{sliceSource(l.ct), boom})
		if err != nil {
			t.Fatal(err)
		}
		p := make([]byte, 100)
		n, err := ra.ReadAt(ctx, p, 33)
		if !errors.Is(err, boom) || !strings.Contains(err.Error(), l.key.Layer().String()) || n != 5 {
			t.Fatalf("ReadAt = %d, %v", n, err)
		}
		if !bytes.Equal(p[:n], l.plain[33:33+n]) {
			t.Fatal("partial read not decrypted")
		}
	})
	t.Run("source shorter than descriptor", func(t *testing.T) {
		k := newLazyLayer(t, l.plain, nil, nil)
		src := truncated{sliceSource(k.ct[:900]), 1000}
		ra, err := k.key.NewReaderAt(src)
		if err != nil {
			t.Fatal(err)
		}
		p := make([]byte, 200)
		n, err := ra.ReadAt(ctx, p, 800)
		if !errors.Is(err, io.ErrUnexpectedEOF) || n != 100 || !bytes.Equal(p[:n], k.plain[800:900]) {
			t.Fatalf("ReadAt = %d, %v", n, err)
		}
	})
	t.Run("size mismatch", func(t *testing.T) {
		if _, err := l.key.NewReaderAt(sliceSource(l.ct[:999])); !errors.Is(err, errdefs.ErrFailedPrecondition) {
			t.Fatalf("NewReaderAt over a short blob: %v", err)
		}
	})
	t.Run("negative offset", func(t *testing.T) {
		if _, err := l.ra.ReadAt(ctx, make([]byte, 1), -1); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Fatalf("ReadAt(-1): %v", err)
		}
	})
	t.Run("cleared key", func(t *testing.T) {
		k := newLazyLayer(t, l.plain, nil, nil)
		k.key.Clear()
		if _, err := k.key.NewReaderAt(sliceSource(k.ct)); !errors.Is(err, errdefs.ErrFailedPrecondition) {
			t.Fatalf("NewReaderAt after Clear: %v", err)
		}
		// A ReaderAt made before keeps working.
		k.checkRange(t, 17, 300)
	})
}

func TestReaderAtConcurrent(t *testing.T) {
	l := newLazyLayer(t, randomBytes(t, 256<<10), nil, nil)
	errs := make(chan error, 8)
	for g := range 8 {
		go func() {
			p := make([]byte, 4099)
			for i := range 200 {
				off := int64((g*7919 + i*4093) % (len(l.plain) - len(p)))
				if _, err := l.ra.ReadAt(context.Background(), p, off); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(p, l.plain[off:off+int64(len(p))]) {
					errs <- errors.New("concurrent ReadAt: wrong plaintext")
					return
				}
			}
			errs <- nil
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

func TestHMACVerifier(t *testing.T) {
	gz := makeLayer(t, true, 3, 30000)
	l := newLazyLayer(t, gz.blob, nil, nil)
	layerName := l.key.Layer().String()
	t.Run("real ciphertext", func(t *testing.T) {
		if err := l.key.VerifyHMAC(bytes.NewReader(l.ct)); err != nil {
			t.Fatal(err)
		}
		if _, err := ociStreamDecrypt(t, l.ct, l.lbco); err != nil {
			t.Fatalf("ocicrypt: %v", err)
		}
		// Written in uneven pieces, as a background fetch delivers ranges.
		v, err := l.key.NewHMACVerifier()
		if err != nil {
			t.Fatal(err)
		}
		for off := 0; off < len(l.ct); {
			n := min(len(l.ct)-off, 1+mrand.IntN(9000))
			if _, err := v.Write(l.ct[off : off+n]); err != nil {
				t.Fatal(err)
			}
			off += n
		}
		if err := v.Verify(); err != nil {
			t.Fatal(err)
		}
	})
	for _, i := range []int{0, 1, len(l.ct) / 2, len(l.ct) - 1} {
		t.Run("flipped byte "+strconv.Itoa(i), func(t *testing.T) {
			bad := bytes.Clone(l.ct)
			bad[i] ^= 0x10
			err := l.key.VerifyHMAC(bytes.NewReader(bad))
			if !errors.Is(err, decrypt.ErrHMACMismatch) || !strings.Contains(err.Error(), layerName) {
				t.Fatalf("flipped byte %d: %v", i, err)
			}
			if _, err := ociStreamDecrypt(t, bad, l.lbco); err == nil {
				t.Fatal("ocicrypt accepted the flipped byte: the test blob is wrong")
			}
		})
	}
	t.Run("truncated", func(t *testing.T) {
		err := l.key.VerifyHMAC(bytes.NewReader(l.ct[:len(l.ct)-1]))
		if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), layerName) {
			t.Fatalf("truncated blob: %v", err)
		}
	})
	t.Run("other layer's key", func(t *testing.T) {
		other := newLazyLayer(t, gz.blob, nil, nil)
		if err := other.key.VerifyHMAC(bytes.NewReader(l.ct)); !errors.Is(err, decrypt.ErrHMACMismatch) {
			t.Fatalf("blob verified with another layer key: %v", err)
		}
	})
	t.Run("read error", func(t *testing.T) {
		boom := errors.New("connection reset")
		err := l.key.VerifyHMAC(io.MultiReader(bytes.NewReader(l.ct[:100]), iotest.ErrReader(boom)))
		if !errors.Is(err, boom) {
			t.Fatalf("read error: %v", err)
		}
	})
	t.Run("cleared key", func(t *testing.T) {
		k := newLazyLayer(t, gz.blob, nil, nil)
		k.key.Clear()
		if _, err := k.key.NewHMACVerifier(); !errors.Is(err, errdefs.ErrFailedPrecondition) {
			t.Fatalf("NewHMACVerifier after Clear: %v", err)
		}
	})
}

// TestPlaintextVerifier: the plaintext of a blob, encrypted again, is its
// ciphertext: written in uneven pieces it passes the digest, size and HMAC
// checks; a changed, missing or extra plaintext byte fails them with
// ErrFailedPrecondition naming the layer.
func TestPlaintextVerifier(t *testing.T) {
	gz := makeLayer(t, true, 3, 300000)
	l := newLazyLayer(t, gz.blob, nil, nil)
	layerName := l.key.Layer().String()
	plain, err := ociStreamDecrypt(t, l.ct, l.lbco) // ocicrypt's plaintext, not ours
	if err != nil {
		t.Fatal(err)
	}
	verify := func(k *decrypt.LayerKey, p []byte) error {
		v, err := k.NewPlaintextVerifier()
		if err != nil {
			t.Fatal(err)
		}
		for off := 0; off < len(p); {
			n := min(len(p)-off, 1+mrand.IntN(200000)) // across the scratch buffer's size
			if _, err := v.Write(p[off : off+n]); err != nil {
				t.Fatal(err)
			}
			off += n
		}
		return v.Verify()
	}
	if err := verify(l.key, plain); err != nil {
		t.Fatalf("the real plaintext: %v", err)
	}
	for name, bad := range map[string][]byte{
		"first byte changed": func() []byte { b := bytes.Clone(plain); b[0] ^= 1; return b }(),
		"last byte changed":  func() []byte { b := bytes.Clone(plain); b[len(b)-1] ^= 0x80; return b }(),
		"truncated":          plain[:len(plain)-1],
		"extra byte":         append(bytes.Clone(plain), 0),
	} {
		t.Run(name, func(t *testing.T) {
			err := verify(l.key, bad)
			if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), layerName) {
				t.Fatalf("%s: %v", name, err)
			}
		})
	}
	t.Run("cleared key", func(t *testing.T) {
		k := newLazyLayer(t, gz.blob, nil, nil)
		k.key.Clear()
		if _, err := k.key.NewPlaintextVerifier(); !errors.Is(err, errdefs.ErrFailedPrecondition) {
			t.Fatalf("NewPlaintextVerifier after Clear: %v", err)
		}
	})
}
