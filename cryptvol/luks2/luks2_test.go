package luks2

import (
	"bytes"
	"context"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"hash"
	"testing"
)

func randomKey(t testing.TB, n int) []byte {
	t.Helper()
	k := make([]byte, n)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

func newImage(t testing.TB, key []byte, pass string) (*Image, []byte) {
	t.Helper()
	im, err := Create(key, CreateOptions{Label: "t"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := im.AddKeyslot(key, []byte(pass), KDFParams{Iterations: MinPBKDF2Iterations}); err != nil {
		t.Fatal(err)
	}
	b, err := im.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return im, b
}

// TestPBKDF2MatchesStdlib compares our []byte-password PBKDF2 with the
// standard library's implementation.
func TestPBKDF2MatchesStdlib(t *testing.T) {
	for _, tc := range []struct {
		hash   string
		newH   func() hash.Hash
		iter   int
		keyLen int
	}{
		{"sha1", sha1.New, 1, 20},
		{"sha256", sha256.New, 1000, 32},
		{"sha256", sha256.New, 3, 64},
		{"sha512", sha512.New, 2, 100},
	} {
		t.Run(tc.hash, func(t *testing.T) {
			pass, salt := randomKey(t, 17), randomKey(t, 32)
			got, err := pbkdf2Key(context.Background(), pass, salt, tc.iter, tc.keyLen, tc.hash)
			if err != nil {
				t.Fatal(err)
			}
			want, err := pbkdf2.Key(tc.newH, string(pass), salt, tc.iter, tc.keyLen)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatal("PBKDF2 mismatch with crypto/pbkdf2")
			}
		})
	}
}

func TestAFRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		keyLen, stripes int
		hash            string
	}{{64, 4000, "sha256"}, {32, 2, "sha1"}, {33, 7, "sha512"}, {64, 1, "sha256"}} {
		t.Run(tc.hash, func(t *testing.T) {
			key := randomKey(t, tc.keyLen)
			m, err := afSplit(key, tc.stripes, tc.hash)
			if err != nil {
				t.Fatal(err)
			}
			if len(m) != tc.keyLen*tc.stripes {
				t.Fatalf("material %d bytes", len(m))
			}
			got, err := afMerge(m, tc.keyLen, tc.stripes, tc.hash)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, key) {
				t.Fatal("AF merge does not give back the key")
			}
			if tc.stripes > 1 {
				m[0] ^= 1 // one flipped bit anywhere destroys the key
				got, _ = afMerge(m, tc.keyLen, tc.stripes, tc.hash)
				if bytes.Equal(got, key) {
					t.Fatal("AF merge survived a corrupted stripe")
				}
			}
		})
	}
}

func TestUnlock(t *testing.T) {
	key := randomKey(t, 64)
	im, b := newImage(t, key, "first")
	if _, err := im.AddKeyslot(key, []byte("second"), KDFParams{Type: "argon2id", Time: 1, MemoryKiB: 64, CPUs: 1}); err != nil {
		t.Fatal(err)
	}
	b2, err := im.Encode()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		img      []byte
		pass     string
		wantSlot string
		wantErr  error
	}{
		{"first slot", b, "first", "0", nil},
		{"second slot argon2id", b2, "second", "1", nil},
		{"first slot after adding", b2, "first", "0", nil},
		{"wrong", b2, "third", "", ErrWrongPassphrase},
		{"empty", b, "", "", ErrWrongPassphrase},
	} {
		t.Run(tc.name, func(t *testing.T) {
			im, err := ReadImage(bytes.NewReader(tc.img))
			if err != nil {
				t.Fatal(err)
			}
			got, slot, err := im.Unlock([]byte(tc.pass))
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err %v, want %v", err, tc.wantErr)
			}
			if tc.wantErr != nil {
				return
			}
			if slot != tc.wantSlot || !bytes.Equal(got, key) {
				t.Fatalf("slot %s, key match %v", slot, bytes.Equal(got, key))
			}
			if err := im.VerifyKey(got); err != nil {
				t.Fatal(err)
			}
			if err := im.VerifyKey(randomKey(t, 64)); err == nil {
				t.Fatal("VerifyKey accepted a random key")
			}
		})
	}
}

func TestParseRejects(t *testing.T) {
	_, good := newImage(t, randomKey(t, 64), "p")
	hs := DefaultHeaderSize
	both := func(f func(b []byte, base int)) []byte {
		b := bytes.Clone(good)
		f(b, 0)
		f(b, hs)
		return b
	}
	for _, tc := range []struct {
		name string
		img  []byte
	}{
		{"empty", nil},
		{"short", good[:100]},
		{"zeros", make([]byte, 2*hs)},
		{"version 1", both(func(b []byte, o int) { b[o+offVersion+1] = 1 })},
		{"bad header size", both(func(b []byte, o int) { b[o+offHdrSize+7] = 1 })},
		{"checksum", both(func(b []byte, o int) { b[o+offCsum] ^= 1 })},
		{"json byte", both(func(b []byte, o int) { b[o+BinaryHeaderSize+3] ^= 0x20 })},
		{"unknown checksum alg", both(func(b []byte, o int) { copy(b[o+offCsumAlg:], "md5\x00\x00\x00") })},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParseBytes(tc.img); !errors.Is(err, ErrInvalidHeader) {
				t.Fatalf("err %v, want ErrInvalidHeader", err)
			}
		})
	}
	t.Run("primary damaged, secondary used", func(t *testing.T) {
		b := bytes.Clone(good)
		b[BinaryHeaderSize+10] ^= 1
		h, err := ParseBytes(b)
		if err != nil {
			t.Fatal(err)
		}
		if h.Label != "t" {
			t.Fatalf("label %q", h.Label)
		}
	})
}

// TestValidateRejectsInconsistentMetadata mutates decoded metadata and
// checks Encode refuses to write it.
func TestValidateRejectsInconsistentMetadata(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(h *Header)
	}{
		{"keyslot outside area", func(h *Header) { h.Metadata.Keyslots["0"].Area.Offset = 1 << 40 }},
		{"keyslot overlaps header", func(h *Header) { h.Metadata.Keyslots["0"].Area.Offset = 4096 }},
		{"too many stripes for area", func(h *Header) { h.Metadata.Keyslots["0"].AF.Stripes = 5000 }},
		{"sector size", func(h *Header) { h.Metadata.Segments["0"].SectorSize = 3000 }},
		{"segment in metadata", func(h *Header) { h.Metadata.Segments["0"].Offset = 4096 }},
		{"digest names missing keyslot", func(h *Header) { h.Metadata.Digests["0"].Keyslots = []string{"9"} }},
		{"key size", func(h *Header) { h.Metadata.Keyslots["0"].KeySize = 0 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			im, _ := newImage(t, randomKey(t, 64), "p")
			tc.mutate(im.Header)
			if _, err := im.Header.Encode(); !errors.Is(err, ErrInvalidHeader) {
				t.Fatalf("err %v, want ErrInvalidHeader", err)
			}
		})
	}
}

func TestDataSegment(t *testing.T) {
	im, _ := newImage(t, randomKey(t, 64), "p")
	_, s, err := im.Header.DataSegment()
	if err != nil {
		t.Fatal(err)
	}
	if s.SectorSize != 4096 || s.Encryption != "aes-xts-plain64" || s.Offset != 0 {
		t.Fatalf("segment %+v", s)
	}
	im.Header.Metadata.Segments["1"] = &Segment{Type: "crypt", Offset: 1 << 30, Size: "dynamic", Encryption: "aes-xts-plain64", SectorSize: 512}
	if _, _, err := im.Header.DataSegment(); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("two segments: %v", err)
	}
}

// FuzzParse feeds raw bytes to the parser (headers are untrusted input).
func FuzzParse(f *testing.F) {
	_, good := newImage(f, randomKey(f, 64), "p")
	f.Add(good[:DefaultHeaderSize])
	f.Add(good[DefaultHeaderSize-64 : 2*DefaultHeaderSize])
	f.Add([]byte("LUKS\xba\xbe\x00\x02"))
	f.Fuzz(func(t *testing.T, data []byte) { checkParse(t, data) })
}

// FuzzParseMetadata wraps the input as the JSON area of a header with a
// correct checksum, so mutations reach the metadata validation instead of
// stopping at the checksum.
func FuzzParseMetadata(f *testing.F) {
	im, good := newImage(f, randomKey(f, 64), "p")
	f.Add(bytes.TrimRight(good[BinaryHeaderSize:DefaultHeaderSize], "\x00"))
	im.Header.Metadata.Segments["0"].Size = "1048576"
	im.Header.Metadata.Segments["0"].Offset = 16 << 20
	b, _ := im.Header.Encode()
	f.Add(bytes.TrimRight(b[BinaryHeaderSize:DefaultHeaderSize], "\x00"))
	f.Add([]byte(`{"keyslots":{},"tokens":{},"segments":{},"digests":{},"config":{"json_size":"12288","keyslots_size":"4096"}}`))
	f.Fuzz(func(t *testing.T, js []byte) {
		if len(js) >= DefaultHeaderSize-BinaryHeaderSize {
			return
		}
		img := bytes.Clone(good[:DefaultHeaderSize])
		clear(img[BinaryHeaderSize:])
		copy(img[BinaryHeaderSize:], js)
		copy(img[offCsum:offCsum+lenCsum], make([]byte, lenCsum))
		copy(img[offCsum:], checksum(sha256.New, img[:BinaryHeaderSize], img[BinaryHeaderSize:]))
		checkParse(t, img)
	})
}

func checkParse(t *testing.T, data []byte) {
	h, err := ParseBytes(data)
	if err != nil {
		if !errors.Is(err, ErrInvalidHeader) {
			t.Fatalf("parse error not ErrInvalidHeader: %v", err)
		}
		return
	}
	_, _, _ = h.DataSegment() // any header that parses: no panic, any answer
	// Whatever parses must re-encode into something that parses.
	out, err := h.Encode()
	if err != nil {
		return // e.g. re-encoded JSON no longer fits the area
	}
	if _, err := ParseBytes(out); err != nil {
		t.Fatalf("re-encoded header does not parse: %v", err)
	}
}

func TestWipeZeroesKeyMaterial(t *testing.T) {
	key := randomKey(t, 64)
	im, _ := newImage(t, key, "p")
	area := im.areas["0"]
	digest := im.Header.Metadata.Digests["0"].Digest
	im.Wipe()
	if !bytes.Equal(area, make([]byte, len(area))) || !bytes.Equal(digest, make([]byte, len(digest))) {
		t.Fatal("Wipe left keyslot material or digest in memory")
	}
	if im.Header != nil || len(im.areas) != 0 {
		t.Fatal("Wipe kept references")
	}
}
