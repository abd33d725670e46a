package dmcrypt

import (
	"bytes"
	"encoding/binary"
	"os"
	"strings"
	"testing"

	"github.com/cocoon-cc/cocoon/cryptvol/engine"
)

// The values of DM_DEV_CREATE etc. as the kernel headers compute them
// (_IOWR(0xfd, nr, struct dm_ioctl), sizeof(struct dm_ioctl) == 312).
func TestIoctlNumbers(t *testing.T) {
	for _, tc := range []struct {
		name string
		cmd  uint32
		want uint32
	}{
		{"DM_DEV_CREATE", cmdDevCreate, 0xc138fd03},
		{"DM_DEV_REMOVE", cmdDevRemove, 0xc138fd04},
		{"DM_DEV_SUSPEND", cmdDevSuspend, 0xc138fd06},
		{"DM_TABLE_LOAD", cmdTableLoad, 0xc138fd09},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ioctlNumber(tc.cmd); got != tc.want {
				t.Fatalf("%#x, want %#x", got, tc.want)
			}
		})
	}
}

func TestEncode(t *testing.T) {
	params := []byte("aes-xts-plain64 00 0 7:0 0")
	for _, tc := range []struct {
		name    string
		targets []target
		flags   uint32
	}{
		{"no targets", nil, 0},
		{"one crypt target", []target{{0, 2048, "crypt", params}}, flagSecureData},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := encode("cocoon-x", "CRYPT-COCOON-x", tc.flags, tc.targets)
			if err != nil {
				t.Fatal(err)
			}
			ne := binary.NativeEndian
			if v := [3]uint32{ne.Uint32(b[0:]), ne.Uint32(b[4:]), ne.Uint32(b[8:])}; v != dmVersion {
				t.Fatalf("version %v", v)
			}
			if got := ne.Uint32(b[offDataSize:]); int(got) != len(b) || got < bufferSize {
				t.Fatalf("data_size %d, buffer %d", got, len(b))
			}
			if ne.Uint32(b[offDataStart:]) != ioctlHeaderSize {
				t.Fatal("data_start")
			}
			if int(ne.Uint32(b[offTargetCount:])) != len(tc.targets) || ne.Uint32(b[offFlags:]) != tc.flags {
				t.Fatal("target_count or flags")
			}
			if got := string(bytes.TrimRight(b[offName:offName+nameLen], "\x00")); got != "cocoon-x" {
				t.Fatalf("name %q", got)
			}
			if got := string(bytes.TrimRight(b[offUUID:offUUID+uuidLen], "\x00")); got != "CRYPT-COCOON-x" {
				t.Fatalf("uuid %q", got)
			}
			if len(tc.targets) == 0 {
				return
			}
			spec := b[ioctlHeaderSize:]
			if ne.Uint64(spec[0:]) != 0 || ne.Uint64(spec[8:]) != 2048 {
				t.Fatal("sector_start/length")
			}
			next := ne.Uint32(spec[20:])
			if next%8 != 0 || int(next) < targetSpecSize+len(params)+1 {
				t.Fatalf("next %d", next)
			}
			if got := string(bytes.TrimRight(spec[24:40], "\x00")); got != "crypt" {
				t.Fatalf("target type %q", got)
			}
			if got := string(spec[targetSpecSize : targetSpecSize+len(params)+1]); got != string(params)+"\x00" {
				t.Fatalf("params %q", got)
			}
		})
	}
	t.Run("name too long", func(t *testing.T) {
		if _, err := encode(strings.Repeat("n", nameLen), "", 0, nil); err == nil {
			t.Fatal("accepted a 128-byte name")
		}
	})
}

func TestCryptParams(t *testing.T) {
	key := make([]byte, 64)
	for i := range key {
		key[i] = byte(i)
	}
	hexKey := "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f" +
		"202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"
	for _, tc := range []struct {
		name string
		t    engine.Target
		want string
	}{
		{"detached 4096", engine.Target{Cipher: "aes-xts-plain64", Key: key, SectorSize: 4096}, "aes-xts-plain64 " + hexKey + " 0 7:3 0 1 sector_size:4096"},
		{"in place 4096", engine.Target{Cipher: "aes-xts-plain64", Key: key, SectorSize: 4096, Offset: 16 << 20}, "aes-xts-plain64 " + hexKey + " 0 7:3 32768 1 sector_size:4096"},
		{"512 with tweak", engine.Target{Cipher: "aes-xts-plain64", Key: key, SectorSize: 512, IVTweak: 9, Offset: 4096}, "aes-xts-plain64 " + hexKey + " 9 7:3 8"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := string(cryptParams(tc.t, "7:3")); got != tc.want {
				t.Fatalf("\n got %s\nwant %s", got, tc.want)
			}
		})
	}
}

func TestAttachWithoutDeviceMapper(t *testing.T) {
	if Available() {
		t.Skip("device-mapper present; this checks the error path on hosts without it")
	}
	_, err := New().Attach(t.Context(), engine.Target{Name: "x", Backing: "/dev/null", Size: 4096, Cipher: "aes-xts-plain64", Key: make([]byte, 64), SectorSize: 4096})
	if err == nil || !strings.Contains(err.Error(), ControlPath) {
		t.Fatalf("err %v", err)
	}
}

func TestProbeOnThisHost(t *testing.T) {
	err := Probe()
	if _, statErr := os.Stat(ControlPath); statErr != nil && err == nil {
		t.Fatal("Probe succeeded without a control node")
	}
	t.Logf("device-mapper probe: %v", err)
}
