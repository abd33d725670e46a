package luks2

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"io"
	"runtime"
	"strings"
	"testing"
)

// sparseDevice is a header device of any size: head, then zeros up to size.
// It lets a test declare a huge keyslot area without the test owning the
// bytes (the code under test must not allocate them either).
type sparseDevice struct {
	head []byte
	size int64
}

func (d *sparseDevice) Size() int64 { return d.size }

func (d *sparseDevice) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("negative offset")
	}
	if off >= d.size {
		return 0, io.EOF
	}
	n := len(p)
	if rest := d.size - off; int64(n) > rest {
		n = int(rest)
	}
	clear(p[:n])
	if off < int64(len(d.head)) {
		copy(p[:n], d.head[off:])
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// withMetadata rewrites the JSON area of both header copies of img and
// their checksums, so a hostile value reaches the metadata checks instead
// of stopping at the checksum.
func withMetadata(t *testing.T, img []byte, mutate func(m map[string]any)) []byte {
	t.Helper()
	hs := int(DefaultHeaderSize)
	dec := json.NewDecoder(bytes.NewReader(bytes.TrimRight(img[BinaryHeaderSize:hs], "\x00")))
	dec.UseNumber() // keep 64-bit numbers exact
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		t.Fatal(err)
	}
	mutate(m)
	js, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if len(js) >= hs-BinaryHeaderSize {
		t.Fatalf("JSON metadata %d bytes does not fit", len(js))
	}
	out := bytes.Clone(img)
	for _, off := range []int{0, hs} {
		bin, area := out[off:off+BinaryHeaderSize], out[off+BinaryHeaderSize:off+hs]
		clear(area)
		copy(area, js)
		clear(bin[offCsum : offCsum+lenCsum])
		copy(bin[offCsum:], checksum(sha256.New, bin, area))
	}
	return out
}

// obj walks a decoded JSON object by keys.
func obj(m map[string]any, keys ...string) map[string]any {
	for _, k := range keys {
		m = m[k].(map[string]any)
	}
	return m
}

func argon2KDF(time, memory, cpus string) func(m map[string]any) {
	return func(m map[string]any) {
		kdf := obj(m, "keyslots", "0", "kdf")
		delete(kdf, "hash")
		delete(kdf, "iterations")
		kdf["type"] = "argon2id"
		kdf["time"], kdf["memory"], kdf["cpus"] = json.Number(time), json.Number(memory), json.Number(cpus)
	}
}

func set(value any, keys ...string) func(m map[string]any) {
	return func(m map[string]any) {
		obj(m, keys[:len(keys)-1]...)[keys[len(keys)-1]] = value
	}
}

func both(fs ...func(m map[string]any)) func(m map[string]any) {
	return func(m map[string]any) {
		for _, f := range fs {
			f(m)
		}
	}
}

// TestHostileHeaders builds headers with hostile values from a real header
// made by this package and checks each fails at once, with an error that
// names the field, is ErrInvalidHeader (or ErrUnsupported) and never
// ErrWrongPassphrase, and costs memory far below what the header asks for.
// Several cases hang (pbkdf2 or digest iterations above uint32) or exhaust
// memory (a 1 TiB keyslot area) when the limits are missing.
func TestHostileHeaders(t *testing.T) {
	key := randomKey(t, 64)
	_, good := newImage(t, key, "p")
	const maxAlloc = 16 << 20 // far below every hostile size here
	for _, tc := range []struct {
		name    string
		mutate  func(m map[string]any)
		device  func(img []byte) io.ReaderAt // default: exactly the image
		pass    string
		wantErr error
		want    string // in the error text
	}{
		{name: "control: right passphrase", pass: "p"},
		{name: "control: wrong passphrase", pass: "q", wantErr: ErrWrongPassphrase, want: "no keyslot opens"},
		{
			name: "argon2 memory 4 TiB", mutate: argon2KDF("4", "4294967296", "1"),
			wantErr: ErrInvalidHeader, want: "keyslot 0: kdf memory 4294967296 KiB exceeds cryptsetup's maximum 4194304",
		},
		{
			name: "argon2 memory one KiB above the maximum", mutate: argon2KDF("4", "4194305", "1"),
			wantErr: ErrInvalidHeader, want: "keyslot 0: kdf memory 4194305 KiB exceeds cryptsetup's maximum 4194304",
		},
		{
			name: "argon2 threads 5", mutate: argon2KDF("4", "64", "5"),
			wantErr: ErrInvalidHeader, want: "keyslot 0: kdf cpus 5 exceeds cryptsetup's maximum 4",
		},
		{
			name: "argon2 time above uint32", mutate: argon2KDF("4294967296", "64", "1"),
			wantErr: ErrInvalidHeader, want: "keyslot 0: kdf time 4294967296 exceeds cryptsetup's maximum 4294967295",
		},
		{
			name: "argon2 memory zero", mutate: argon2KDF("4", "0", "1"),
			wantErr: ErrInvalidHeader, want: "keyslot 0: kdf memory 0",
		},
		{
			name: "pbkdf2 iterations above uint32", mutate: set(json.Number("4294967296"), "keyslots", "0", "kdf", "iterations"),
			wantErr: ErrInvalidHeader, want: "keyslot 0: kdf iterations 4294967296 exceeds cryptsetup's maximum 4294967295",
		},
		{
			name: "pbkdf2 iterations negative", mutate: set(json.Number("-1"), "keyslots", "0", "kdf", "iterations"),
			wantErr: ErrInvalidHeader, want: "keyslot 0: kdf iterations -1",
		},
		{
			name: "digest iterations above uint32", mutate: set(json.Number("4294967296"), "digests", "0", "iterations"),
			wantErr: ErrInvalidHeader, want: "digest 0: iterations 4294967296 exceeds cryptsetup's maximum 4294967295",
		},
		{
			name: "keyslot area offset above int64", mutate: set("18446744073709547520", "keyslots", "0", "area", "offset"),
			wantErr: ErrInvalidHeader, want: "keyslot 0: area offset 18446744073709547520 does not fit in an int64",
		},
		{
			name: "keyslot area size beyond uint64", mutate: set("99999999999999999999", "keyslots", "0", "area", "size"),
			wantErr: ErrInvalidHeader, want: "keyslots.area.size",
		},
		{
			name: "segment offset above int64", mutate: set("9223372036854775808", "segments", "0", "offset"),
			wantErr: ErrInvalidHeader, want: "segment 0: offset 9223372036854775808 does not fit in an int64",
		},
		{
			name: "segment size above int64", mutate: set("9223372036854779904", "segments", "0", "size"),
			wantErr: ErrInvalidHeader, want: "segment 0: size 9223372036854779904 does not fit in an int64",
		},
		{
			name: "keyslots_size above int64", mutate: set("9223372036854775808", "config", "keyslots_size"),
			wantErr: ErrInvalidHeader, want: "config keyslots_size 9223372036854775808 does not fit in an int64",
		},
		{
			// Today's validation allows a 1 TiB keyslots area and ReadImage
			// allocates all of it: the engine dies of out-of-memory.
			name: "1 TiB keyslot area",
			mutate: both(set("1099511627776", "config", "keyslots_size"),
				set("1099511595008", "keyslots", "0", "area", "size")),
			device:  func(img []byte) io.ReaderAt { return &sparseDevice{img, 2 << 40} },
			wantErr: ErrInvalidHeader, want: "config keyslots_size 1099511627776 exceeds cryptsetup's maximum 134217728",
		},
		{
			// The largest area cryptsetup allows: only key_size x stripes
			// bytes (rounded to sectors) of it are read, and it opens.
			name: "128 MiB keyslot area opens reading only the key material",
			mutate: both(set("134217728", "config", "keyslots_size"),
				set("134217728", "keyslots", "0", "area", "size")),
			device: func(img []byte) io.ReaderAt { return &sparseDevice{img, 1 << 30} },
			pass:   "p",
		},
		{
			name:    "keyslot area past the end of the device",
			device:  func(img []byte) io.ReaderAt { return bytes.NewReader(img[:2*DefaultHeaderSize+128<<10]) },
			wantErr: ErrInvalidHeader, want: "header device is 163840 bytes, smaller than the 16777216 bytes of LUKS2 metadata",
		},
		{
			name: "only keyslot has an unknown KDF", mutate: set("scrypt", "keyslots", "0", "kdf", "type"),
			pass: "p", wantErr: ErrUnsupported, want: `keyslot 0: unsupported LUKS2 feature: KDF "scrypt"`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := good
			if tc.mutate != nil {
				img = withMetadata(t, good, tc.mutate)
			}
			var dev io.ReaderAt = bytes.NewReader(img)
			if tc.device != nil {
				dev = tc.device(img)
			}
			runtime.GC()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			im, err := ReadImage(dev)
			var got []byte
			if err == nil {
				got, _, err = im.Unlock([]byte(tc.pass))
			}
			runtime.ReadMemStats(&after)
			t.Logf("allocated %d bytes; err: %v", after.TotalAlloc-before.TotalAlloc, err)
			if n := after.TotalAlloc - before.TotalAlloc; n > maxAlloc {
				t.Errorf("allocated %d bytes, want at most %d", n, maxAlloc)
			}
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("err %v", err)
				}
				if !bytes.Equal(got, key) {
					t.Fatal("unlocked a different key")
				}
				return
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err %v, want %v", err, tc.wantErr)
			}
			if tc.wantErr != ErrWrongPassphrase && errors.Is(err, ErrWrongPassphrase) {
				t.Fatalf("header error %q reads as a wrong passphrase", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %q does not say %q", err, tc.want)
			}
		})
	}
}
