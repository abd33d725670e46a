package securemount

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/cocoon-cc/cocoon/cryptvol/luks2"
)

// MaxKeySize bounds a volume key (a LUKS2 passphrase) from any source.
// Upstream's random key is 4096 bytes; cryptsetup reads key files of up
// to 8 MiB, but nothing sensible comes near 1 MiB.
const MaxKeySize = 1 << 20

// Unsealer unseals a "sealed.…" secret (*sealed.Unsealer). SecureMount
// zeroizes the returned plaintext after use, so an implementation must
// return a slice it does not keep (the same holds for ResourceGetter).
type Unsealer interface {
	Unseal(ctx context.Context, sealed []byte) ([]byte, error)
}

// ResourceGetter fetches a "kbs:///…" resource (*kbs.Client, the
// daemon's attested KBS client).
type ResourceGetter interface {
	GetResource(ctx context.Context, uri string) ([]byte, error)
}

// Key schemes, in the order upstream tries them (get_plaintext_key).
const (
	schemeSealed = "sealed"
	schemeKBS    = "kbs"
	schemeFile   = "file"
)

// keyScheme tells which source serves uri: "sealed." first, then any URI
// upstream's ResourceUri accepts (scheme kbs or kbs+<plugin>, with a
// path), then "file://".
func keyScheme(uri string) (string, error) {
	switch {
	case strings.HasPrefix(uri, "sealed."):
		return schemeSealed, nil
	case isResourceURI(uri):
		return schemeKBS, nil
	case strings.HasPrefix(uri, "file://"):
		return schemeFile, nil
	}
	return "", fail(ErrInvalidOptions, msgIllegalKeyScheme, nil)
}

func isResourceURI(uri string) bool {
	u, err := url.Parse(uri)
	if err != nil || u.Path == "" {
		return false
	}
	return u.Scheme == "kbs" || strings.HasPrefix(u.Scheme, "kbs+") && len(u.Scheme) > len("kbs+")
}

// getKey resolves the key URI. The caller owns the result and zeroizes it.
func (m *Mounter) getKey(ctx context.Context, uri string) ([]byte, error) {
	scheme, err := keyScheme(uri)
	if err != nil {
		return nil, err
	}
	var key []byte
	switch scheme {
	case schemeSealed:
		if m.opts.Unsealer == nil {
			return nil, fail(ErrKey, msgGetKeyFailed, errors.New("no sealed-secret unsealer is configured"))
		}
		key, err = m.opts.Unsealer.Unseal(ctx, []byte(uri))
	case schemeKBS:
		if m.opts.Resources == nil {
			return nil, fail(ErrKey, msgGetKeyFailed, errors.New("no KBS client is configured"))
		}
		key, err = m.opts.Resources.GetResource(ctx, uri)
	case schemeFile:
		key, err = readKeyFile(strings.TrimPrefix(uri, "file://"))
		if err != nil {
			return nil, fail(ErrKey, msgIOError, err)
		}
	}
	if err != nil {
		return nil, fail(ErrKey, msgGetKeyFailed, err)
	}
	switch {
	case len(key) == 0:
		return nil, fail(ErrKey, msgGetKeyFailed, fmt.Errorf("the %s key is empty", scheme))
	case len(key) > MaxKeySize:
		luks2.Zero(key)
		return nil, fail(ErrKey, msgGetKeyFailed, fmt.Errorf("the %s key is larger than %d bytes", scheme, MaxKeySize))
	}
	return key, nil
}

// readKeyFile reads a local key file of at most MaxKeySize bytes. The path
// is used as upstream uses it (what follows "file://"; relative paths are
// relative to the daemon's working directory).
func readKeyFile(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("key file %s is not a regular file", path)
	}
	if st.Size() > MaxKeySize {
		return nil, fmt.Errorf("key file %s is larger than %d bytes", path, MaxKeySize)
	}
	key := make([]byte, st.Size(), st.Size()+1)
	n, err := io.ReadFull(f, key)
	if err != nil {
		luks2.Zero(key[:n])
		return nil, fmt.Errorf("reading key file %s: %w", path, err)
	}
	return key, nil
}
