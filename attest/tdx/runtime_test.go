package tdx_test

import (
	"bytes"
	"context"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/eventlog"
	"github.com/cocoon-cc/cocoon/attest/internal/teetest"
	"github.com/cocoon-cc/cocoon/attest/tdx/tdxtest"
)

func TestRuntimeMeasurement(t *testing.T) {
	dir := t.TempDir()
	values := make([][]byte, 4)
	for i := range values {
		values[i] = bytes.Repeat([]byte{byte(0xA0 + i)}, 48)
		if err := os.WriteFile(filepath.Join(dir, "rtmr"+strconv.Itoa(i)+":sha384"), values[i], 0o600); err != nil {
			t.Fatal(err)
		}
	}
	a, _ := tdxtest.New(t, tdxtest.WithMeasurementsDir(dir))
	r, ok := a.(eventlog.RegisterReader)
	if !ok {
		t.Fatalf("%T does not implement eventlog.RegisterReader", a)
	}
	ctx := context.Background()
	for _, tc := range []struct{ pcr, rtmr int }{{1, 0}, {7, 0}, {2, 1}, {6, 1}, {8, 2}, {15, 2}, {0, 3}, {17, 3}, {23, 3}} {
		got, err := r.RuntimeMeasurement(ctx, tc.pcr)
		if err != nil {
			t.Fatalf("RuntimeMeasurement(%d): %v", tc.pcr, err)
		}
		if !bytes.Equal(got, values[tc.rtmr]) {
			t.Errorf("RuntimeMeasurement(%d) = %x, want RTMR%d %x", tc.pcr, got, tc.rtmr, values[tc.rtmr])
		}
	}
	// Errors: bad register, short value, missing file, cancelled context.
	if err := os.WriteFile(filepath.Join(dir, "rtmr2:sha384"), make([]byte, 47), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "rtmr1:sha384")); err != nil {
		t.Fatal(err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	for _, tc := range []struct {
		name    string
		ctx     context.Context
		pcr     int
		wantErr string
		is      error
	}{
		{"negative register", ctx, -1, "not a PCR index", nil},
		{"short value", ctx, 8, "read RTMR2: got 47 bytes, want 48", nil},
		{"missing file", ctx, 3, "read RTMR1", os.ErrNotExist},
		{"cancelled", cancelled, 17, "canceled", context.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := r.RuntimeMeasurement(tc.ctx, tc.pcr)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want %q", err, tc.wantErr)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Fatalf("err = %v, not %v", err, tc.is)
			}
		})
	}
}

// TestEmulatedRTMRs checks tdxtest.WithAAELPath: extends through the
// attester change the emulated RTMR the quotes carry, and an AAEL written
// through it verifies.
func TestEmulatedRTMRs(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	a, v := tdxtest.New(t, tdxtest.WithAAELPath(filepath.Join(dir, eventlog.FileName)))
	l, err := eventlog.Open(ctx, dir, eventlog.SHA384, eventlog.DefaultInitPCR, a.(attest.RuntimeMeasurer))
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Extend(ctx, "example.com", "op", `{"k":"v"}`, nil); err != nil {
		t.Fatal(err)
	}
	e, _ := eventlog.NewEntry("example.com", "op", `{"k":"v"}`)
	d, _ := e.Digest(eventlog.SHA384)
	want := sha512.Sum384(append(make([]byte, 48), d...))
	got, err := a.(eventlog.RegisterReader).RuntimeMeasurement(ctx, 17)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want[:]) {
		t.Fatalf("RTMR3 = %x, want %x", got, want)
	}
	_, claims := teetest.RoundTrip(t, a, v, []byte("rd"))
	body := claims["quote"].(map[string]any)["body"].(map[string]any)
	if body["rtmr_3"] != hex.EncodeToString(want[:]) {
		t.Errorf("quoted rtmr_3 = %v, want %x", body["rtmr_3"], want)
	}
	logs, _ := claims["uefi_event_logs"].([]any)
	if len(logs) != 1 {
		t.Fatalf("uefi_event_logs = %v, want the AAEL entry", claims["uefi_event_logs"])
	}
	// An extend the log does not record breaks the replay.
	if err := a.(attest.RuntimeMeasurer).ExtendRuntimeMeasurement(ctx, 17, d); err != nil {
		t.Fatal(err)
	}
	ev := teetest.Evidence(t, a, []byte("rd"))
	if _, err := v.Verify(ctx, ev, []byte("rd")); err == nil || !strings.Contains(err.Error(), "RTMR3") {
		t.Fatalf("unrecorded extend: Verify err = %v, want an RTMR3 mismatch", err)
	}
}
