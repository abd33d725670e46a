package securemount

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/cocoon-cc/cocoon/attest/kbs"
	"github.com/cocoon-cc/cocoon/secretsfs/sealed"
)

// fakeKBS serves resources from a map, as kbs.Client would after
// attestation, and records what was asked.
type fakeKBS struct {
	mu    sync.Mutex
	res   map[string][]byte
	asked []string
}

func (f *fakeKBS) GetResource(_ context.Context, uri string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asked = append(f.asked, uri)
	b, ok := f.res[uri]
	if !ok {
		return nil, errors.New("get resource: KBS answered 404 Not Found")
	}
	return bytes.Clone(b), nil
}

// The daemon's real types fit the Options seams.
var (
	_ Unsealer       = (*sealed.Unsealer)(nil)
	_ ResourceGetter = (*kbs.Client)(nil)
)

func TestKeyScheme(t *testing.T) {
	for uri, want := range map[string]string{
		"sealed.eyJ.eyJ.sig":           schemeSealed,
		"kbs:///default/key/1":         schemeKBS,
		"kbs://kbs.example:8080/a/b/c": schemeKBS,
		"kbs+pkcs11:///slot/key":       schemeKBS,
		"KBS:///default/key/1":         schemeKBS, // URL schemes are case-insensitive
		"file:///run/key":              schemeFile,
		"file://./key":                 schemeFile,
		"kbs+:///a/b/c":                "",
		"kbs:":                         "",
		"https://kbs/a/b/c":            "",
		"/run/key":                     "",
		"":                             "",
	} {
		got, err := keyScheme(uri)
		if want == "" {
			if err == nil || err.Error() != "The scheme of the key uri should be `kbs`, `file` or `sealed`" || !errors.Is(err, ErrInvalidOptions) {
				t.Errorf("%q: %q, %v", uri, got, err)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("%q: %q, %v, want %q", uri, got, err, want)
		}
	}
}

func TestGetKey(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "key")
	if err := os.WriteFile(keyFile, []byte("file key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big")
	if err := os.WriteFile(big, make([]byte, MaxKeySize+1), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	getter := &fakeKBS{res: map[string][]byte{
		"kbs:///default/vol/key": []byte("kbs key"),
		"kbs:///default/vol/big": make([]byte, MaxKeySize+1),
	}}
	m := New(Options{Resources: getter})
	for uri, want := range map[string]string{
		"kbs:///default/vol/key": "kbs key",
		"file://" + keyFile:      "file key\n", // byte for byte, newline included, as cryptsetup reads it
	} {
		got, err := m.getKey(ctx, uri)
		if err != nil || string(got) != want {
			t.Errorf("%s: %q, %v", uri, got, err)
		}
	}
	for uri, want := range map[string]string{
		"kbs:///default/vol/none": "Failed to get key: get resource: KBS answered 404 Not Found",
		"kbs:///default/vol/big":  "Failed to get key: the kbs key is larger than 1048576 bytes",
		"file://" + big:           "I/O error: key file " + big + " is larger than 1048576 bytes",
		"file://" + empty:         "Failed to get key: the file key is empty",
		"file://" + dir:           "I/O error: key file " + dir + " is not a regular file",
		"file:///nonexistent/key": "I/O error: open /nonexistent/key: no such file or directory",
		"sealed.x.y.z":            "Failed to get key: no sealed-secret unsealer is configured",
	} {
		_, err := m.getKey(ctx, uri)
		if err == nil || err.Error() != want || !errors.Is(err, ErrKey) {
			t.Errorf("%s: error %v, want %q", uri, err, want)
		}
	}
	if _, err := New(Options{}).getKey(ctx, "kbs:///default/vol/key"); err == nil || !strings.Contains(err.Error(), "no KBS client is configured") {
		t.Errorf("no getter: %v", err)
	}
}
