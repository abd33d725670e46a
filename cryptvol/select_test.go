package cryptvol

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/cocoon-cc/cocoon/cryptvol/engine/dmcrypt"
)

func TestSelectEngine(t *testing.T) {
	dmErr := dmcrypt.Probe()
	autoWant := EngineUserspace
	if dmErr == nil {
		autoWant = EngineDMCrypt
	}
	for _, tc := range []struct {
		name, engine, want string
		wantErr            error
	}{
		{"auto", EngineAuto, autoWant, nil},
		{"empty means auto", "", autoWant, nil},
		{"forced userspace", EngineUserspace, EngineUserspace, nil},
		{"unknown", "loopaes", "", ErrNoEngine},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, err := SelectEngine(testCtx(t), tc.engine, t.TempDir())
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err %v, want %v", err, tc.wantErr)
			}
			if err == nil && e.Name() != tc.want {
				t.Fatalf("engine %s, want %s", e.Name(), tc.want)
			}
		})
	}
	t.Run("forced dmcrypt", func(t *testing.T) {
		_, err := SelectEngine(testCtx(t), EngineDMCrypt, "")
		if (dmErr != nil) != errors.Is(err, ErrNoEngine) {
			t.Fatalf("probe %v, select %v", dmErr, err)
		}
	})
}

func TestFormatRejects(t *testing.T) {
	dir := t.TempDir()
	small := filepath.Join(dir, "small")
	sparseFile(t, small, 8<<20) // below the 16 MiB in-place metadata
	for _, tc := range []struct {
		name string
		o    FormatOptions
	}{
		{"no passphrase", FormatOptions{Device: small}},
		{"no device", FormatOptions{Passphrase: []byte("p")}},
		{"in place on a device smaller than the metadata", FormatOptions{Device: small, Passphrase: []byte("p"), KDF: fastKDF}},
		{"missing device", FormatOptions{Device: filepath.Join(dir, "nope"), Passphrase: []byte("p"), KDF: fastKDF}},
		{"iterations below cryptsetup's minimum", FormatOptions{Device: small, Header: filepath.Join(dir, "h"), Passphrase: []byte("p"), KDF: fastKDFWith(10)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := Format(testCtx(t), tc.o); err == nil {
				t.Fatal("format succeeded")
			}
		})
	}
}
