package initdata

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type vector struct {
	AnnotationValue string `json:"annotation_value"`
	DecodedTOMLFile string `json:"decoded_toml_file"`
	DecodedTOMLLen  int    `json:"decoded_toml_len"`
	Algorithm       string `json:"algorithm"`
	DigestHex       string `json:"digest_hex"`
	TDXHex          string `json:"tdx_mrconfigid_48_hex"`
	TDXB64          string `json:"tdx_mrconfigid_qemu_param_b64"`
	SNPHex          string `json:"snp_hostdata_32_hex"`
	SNPB64          string `json:"snp_host_data_qemu_param_b64"`
	PCR8ExtendHex   string `json:"vtpm_pcr8_extend_value_hex"`
}

func loadVector(t testing.TB) (vector, []byte) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", "initdata-vector.json"))
	if err != nil {
		t.Fatal(err)
	}
	var v vector
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile(filepath.Join("testdata", v.DecodedTOMLFile))
	if err != nil {
		t.Fatal(err)
	}
	return v, doc
}

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestVector(t *testing.T) {
	v, file := loadVector(t)
	decoded, err := DecodeAnnotation(v.AnnotationValue)
	if err != nil {
		t.Fatal(err)
	}
	if len(decoded) != v.DecodedTOMLLen || !bytes.Equal(decoded, file) {
		t.Fatalf("decoded annotation is %d bytes, differs from %s (%d bytes)", len(decoded), v.DecodedTOMLFile, len(file))
	}
	doc, err := Parse(decoded)
	if err != nil {
		t.Fatal(err)
	}
	if string(doc.Algorithm) != v.Algorithm {
		t.Errorf("algorithm = %q, want %q", doc.Algorithm, v.Algorithm)
	}
	if !strings.Contains(doc.Data[KeyPolicy], "package agent_policy") {
		t.Errorf("data[%q] does not hold the policy", KeyPolicy)
	}
	digest := doc.Digest()
	if got := hex.EncodeToString(digest); got != v.DigestHex {
		t.Fatalf("digest = %s, want %s", got, v.DigestHex)
	}
	if got := hex.EncodeToString(unhex(t, v.PCR8ExtendHex)); got != hex.EncodeToString(digest) {
		t.Errorf("vTPM extend value %s is not the digest", got)
	}
	for _, tc := range []struct {
		tee     string
		wantHex string
		wantB64 string
	}{
		{"tdx", v.TDXHex, v.TDXB64},
		{"snp", v.SNPHex, v.SNPB64},
	} {
		t.Run(tc.tee, func(t *testing.T) {
			reg, err := ExpectedRegister(tc.tee, digest)
			if err != nil {
				t.Fatal(err)
			}
			if got := hex.EncodeToString(reg); got != tc.wantHex {
				t.Errorf("register = %s, want %s", got, tc.wantHex)
			}
			if got := base64.StdEncoding.EncodeToString(reg); got != tc.wantB64 {
				t.Errorf("QEMU parameter = %s, want %s", got, tc.wantB64)
			}
			if err := Check(tc.tee, digest, reg); err != nil {
				t.Errorf("Check(matching) = %v", err)
			}
		})
	}
}

func TestExpectedRegister(t *testing.T) {
	d32 := bytes.Repeat([]byte{0xAA}, 32)
	d48 := bytes.Repeat([]byte{0xBB}, 48)
	d64 := bytes.Repeat([]byte{0xCC}, 64)
	// sha256(zeros32 || 0x2385...) computed independently with Python hashlib.
	v, _ := loadVector(t)
	for _, tc := range []struct {
		name, tee string
		digest    []byte
		want      []byte
		wantErr   bool
	}{
		{"tdx pads sha256", "tdx", d32, append(bytes.Clone(d32), make([]byte, 16)...), false},
		{"tdx keeps sha384", "tdx", d48, d48, false},
		{"tdx truncates sha512", "tdx", d64, d64[:48], false},
		{"snp keeps sha256", "snp", d32, d32, false},
		{"snp truncates sha384", "snp", d48, d48[:32], false},
		{"tpm extends pcr8", "tpm", unhex(t, v.DigestHex), unhex(t, "5969a150dc60c85c0cd9744e296cfc81a3e622413c0359f199099b7a3bcef135"), false},
		{"tpm refuses sha384", "tpm", d48, nil, true},
		{"az-tdx-vtpm is a tpm", "az-tdx-vtpm", unhex(t, v.DigestHex), unhex(t, "5969a150dc60c85c0cd9744e296cfc81a3e622413c0359f199099b7a3bcef135"), false},
		{"sample unsupported", "sample", d32, nil, true},
		{"empty digest", "tdx", nil, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ExpectedRegister(tc.tee, tc.digest)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if !bytes.Equal(got, tc.want) {
				t.Errorf("got %x, want %x", got, tc.want)
			}
		})
	}
}

func TestCheckMismatch(t *testing.T) {
	d := bytes.Repeat([]byte{1}, 32)
	for _, tc := range []struct {
		name     string
		tee      string
		register []byte
	}{
		{"tdx flipped", "tdx", func() []byte { r := make([]byte, 48); copy(r, d); r[47] ^= 1; return r }()},
		{"tdx short", "tdx", d},
		{"snp other", "snp", bytes.Repeat([]byte{2}, 32)},
		{"tpm raw digest is not the PCR value", "tpm", d},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Check(tc.tee, d, tc.register)
			if !errors.Is(err, ErrInconsistent) {
				t.Fatalf("err = %v, want ErrInconsistent", err)
			}
			if err.Error() != "The initdata supplied by the parameter is inconsistent with that of the current platform." {
				t.Errorf("message %q differs from upstream", err)
			}
		})
	}
	if err := Check("sample", d, d); !errors.Is(err, ErrUnsupportedTEE) {
		t.Errorf("sample: err = %v, want ErrUnsupportedTEE", err)
	}
}

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name    string
		doc     string
		wantErr string
		alg     Algorithm
		data    map[string]string
	}{
		{"minimal", "version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n", "", SHA384, map[string]string{}},
		{"data", "version = \"0.1.0\"\nalgorithm = \"sha512\"\n[data]\n\"aa.toml\" = '''\n[log]\nlevel = \"debug\"\n'''\n", "", SHA512, map[string]string{"aa.toml": "[log]\nlevel = \"debug\"\n"}},
		{"bad version", "version = \"0.2.0\"\nalgorithm = \"sha256\"\n[data]\n", "unsupported version", "", nil},
		{"missing version", "algorithm = \"sha256\"\n[data]\n", `missing field "version"`, "", nil},
		{"missing data", "version = \"0.1.0\"\nalgorithm = \"sha256\"\n", `missing field "data"`, "", nil},
		{"sm3", "version = \"0.1.0\"\nalgorithm = \"sm3\"\n[data]\n", "no SM3 implementation", "", nil},
		{"md5", "version = \"0.1.0\"\nalgorithm = \"md5\"\n[data]\n", "unsupported algorithm", "", nil},
		{"non-string data", "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\nx = 1\n", "parse TOML", "", nil},
		{"syntax error names line", "version = \"0.1.0\"\nalgorithm = = \"sha256\"\n[data]\n", "line 2", "", nil},
		{"invalid utf-8", "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\nx = \"\xff\"\n", "UTF-8", "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc, err := Parse([]byte(tc.doc))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if doc.Algorithm != tc.alg || len(doc.Data) != len(tc.data) {
				t.Fatalf("got %+v", doc)
			}
			for k, v := range tc.data {
				if doc.Data[k] != v {
					t.Errorf("data[%q] = %q, want %q", k, doc.Data[k], v)
				}
			}
			if !bytes.Equal(doc.Raw, []byte(tc.doc)) {
				t.Error("Raw is not the exact input")
			}
		})
	}
}

// The digest covers the exact bytes: two documents that parse the same but
// differ in whitespace have different digests.
func TestDigestExactBytes(t *testing.T) {
	a, err := Parse([]byte("version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := Parse([]byte("version = \"0.1.0\"\nalgorithm = \"sha256\"\n\n[data]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(a.Digest(), b.Digest()) {
		t.Fatal("whitespace change did not change the digest")
	}
}

func TestAnnotationRoundTrip(t *testing.T) {
	_, doc := loadVector(t)
	val, err := EncodeAnnotation(doc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := base64.StdEncoding.Strict().DecodeString(val); err != nil {
		t.Fatalf("encoded value is not strict padded std base64: %v", err)
	}
	back, err := DecodeAnnotation(val)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back, doc) {
		t.Fatal("round trip changed the document")
	}
}

func TestDecodeAnnotationErrors(t *testing.T) {
	gzipOf := func(b []byte) []byte { c, _ := compress(b); return c }
	for _, tc := range []struct {
		name, value, wantErr string
	}{
		{"empty", "", "empty"},
		{"not base64", "This is not valid base64!", "base64"},
		{"url alphabet", strings.NewReplacer("+", "-", "/", "_").Replace(base64.StdEncoding.EncodeToString([]byte{0xfb, 0xff, 0xfe, 0xfb, 0xff})), "base64"},
		{"not gzip", base64.StdEncoding.EncodeToString([]byte("raw uncompressed data")), "gunzip"},
		{"truncated gzip", base64.StdEncoding.EncodeToString(gzipOf([]byte("version = 1"))[:12]), "gunzip"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeAnnotation(tc.value)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want %q", err, tc.wantErr)
			}
		})
	}
}

// TestAnnotationMultipleGzipMembers: the Kata Go runtime reads the
// annotation with Go's gzip reader, which decodes concatenated members as
// one stream; the document it measures is all of them, and so is ours.
// The decompressed-size bound covers the members together.
func TestAnnotationMultipleGzipMembers(t *testing.T) {
	_, doc := loadVector(t)
	var gz []byte
	for _, part := range [][]byte{doc[:len(doc)/3], doc[len(doc)/3 : len(doc)/2], doc[len(doc)/2:]} {
		c, err := compress(part)
		if err != nil {
			t.Fatal(err)
		}
		gz = append(gz, c...)
	}
	back, err := DecodeAnnotation(base64.StdEncoding.EncodeToString(gz))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back, doc) {
		t.Fatalf("decoded %d bytes, want the whole %d-byte document", len(back), len(doc))
	}

	// Members of zeros that pass the bound only together.
	var bomb bytes.Buffer
	zero := make([]byte, 1<<20)
	for range MaxDocumentSize/len(zero) + 1 {
		zw := gzip.NewWriter(&bomb)
		if _, err := zw.Write(zero); err != nil {
			t.Fatal(err)
		}
		if err := zw.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := DecodeAnnotation(base64.StdEncoding.EncodeToString(bomb.Bytes())); err == nil || !strings.Contains(err.Error(), "exceeds") {
		t.Fatalf("members past the bound together: err = %v, want the size limit", err)
	}
}

func TestDecompressBounded(t *testing.T) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zero := make([]byte, 1<<20)
	for range MaxDocumentSize/len(zero) + 1 {
		if _, err := zw.Write(zero); err != nil {
			t.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := decompress(buf.Bytes(), false); err == nil || !strings.Contains(err.Error(), "exceeds") {
		t.Fatalf("err = %v, want size limit", err)
	}
}

func TestDevice(t *testing.T) {
	_, doc := loadVector(t)
	img, err := EncodeDevice(doc)
	if err != nil {
		t.Fatal(err)
	}
	if len(img)%512 != 0 || string(img[:8]) != "initdata" {
		t.Fatalf("image is %d bytes starting %q", len(img), img[:8])
	}
	n := binary.LittleEndian.Uint64(img[8:16])
	if n == 0 || 16+n > uint64(len(img)) || !bytes.Equal(img[16+n:], make([]byte, uint64(len(img))-16-n)) {
		t.Fatalf("bad length %d or padding", n)
	}
	path := filepath.Join(t.TempDir(), "initdata.img")
	if err := os.WriteFile(path, img, 0o600); err != nil {
		t.Fatal(err)
	}
	back, err := ReadDevice(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back, doc) {
		t.Fatal("device round trip changed the document")
	}

	for _, tc := range []struct {
		name    string
		content []byte
		wantErr string
	}{
		{"short", []byte("initdata\x01\x00"), "header"},
		{"bad magic", append([]byte("initdatx"), make([]byte, 8)...), "magic"},
		{"huge length", []byte("initdata\x00\x00\x00\x00\x00\x00\x00\x10"), "exceeds"},
		{"truncated payload", append([]byte("initdata\x20\x00\x00\x00\x00\x00\x00\x00"), 1, 2, 3), "payload"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeDevice(bytes.NewReader(tc.content))
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want %q", err, tc.wantErr)
			}
		})
	}
}

func FuzzDecodeAnnotation(f *testing.F) {
	v, doc := loadVector(f)
	f.Add(v.AnnotationValue)
	f.Add(base64.StdEncoding.EncodeToString(doc))
	f.Add("H4sIAAAAAAAA")
	f.Fuzz(func(t *testing.T, value string) {
		raw, err := DecodeAnnotation(value)
		if err != nil {
			return
		}
		if len(raw) > MaxDocumentSize {
			t.Fatalf("decoded %d bytes beyond the limit", len(raw))
		}
		if d, err := Parse(raw); err == nil && !bytes.Equal(d.Raw, raw) {
			t.Fatal("Raw differs from the decoded bytes")
		}
	})
}

func FuzzParse(f *testing.F) {
	_, doc := loadVector(f)
	f.Add(doc)
	f.Add([]byte("version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n"))
	f.Add([]byte("initdata\x10\x00\x00\x00\x00\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if d, err := Parse(b); err == nil {
			if len(d.Digest()) == 0 || d.Version != Version {
				t.Fatalf("accepted document with version %q", d.Version)
			}
		}
		_, _ = DecodeDevice(bytes.NewReader(b))
	})
}
