package decrypt

import (
	"crypto/aes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// A LayerKey travels to another cocoon process (the detached lazy FUSE
// server, fusefs/server) in memory only: MarshalBinary on one side, over a
// unix socket, UnmarshalLayerKey on the other. The encoding holds the
// layer key itself, so it is a SECRET: never log it, never write it to a
// file, argv or the environment, and zero it (clear) as soon as it was
// sent or decoded. UnmarshalLayerKey zeroes nothing of its input; the
// caller does.
//
// Layout (version 1), integers big-endian:
//
//	1 byte version | 8 bytes size | 16 bytes nonce
//	| 2-byte length + key | 2-byte length + expected HMAC
//	| 2-byte length + layer digest | 2-byte length + plain digest
const layerKeyVersion = 1

// ErrLayerKeyEncoding reports a marshalled LayerKey that does not decode.
var ErrLayerKeyEncoding = fmt.Errorf("malformed layer key encoding: %w", errdefs.ErrInvalidArgument)

// MarshalBinary returns the layer key and its parameters, a secret (see
// above). It fails once the key was cleared.
func (k *LayerKey) MarshalBinary() ([]byte, error) {
	if k.block == nil {
		return nil, fmt.Errorf("layer %s: layer key was cleared: %w", k.layer, errdefs.ErrFailedPrecondition)
	}
	b := make([]byte, 0, 1+8+NonceSize+4*2+len(k.key)+len(k.wantMAC)+len(k.layer)+len(k.plainDigest))
	b = append(b, layerKeyVersion)
	b = binary.BigEndian.AppendUint64(b, uint64(k.size))
	b = append(b, k.nonce[:]...)
	for _, f := range [][]byte{k.key, k.wantMAC, []byte(k.layer), []byte(k.plainDigest)} {
		b = binary.BigEndian.AppendUint16(b, uint16(len(f)))
		b = append(b, f...)
	}
	return b, nil
}

// UnmarshalLayerKey rebuilds a LayerKey from MarshalBinary's encoding,
// with the checks UnwrapLayer makes (32-byte key and HMAC, valid digests).
// The returned key owns a copy of the key bytes; the caller zeroes b.
func UnmarshalLayerKey(b []byte) (*LayerKey, error) {
	if len(b) < 1+8+NonceSize || b[0] != layerKeyVersion {
		return nil, ErrLayerKeyEncoding
	}
	k := &LayerKey{size: int64(binary.BigEndian.Uint64(b[1:9]))}
	copy(k.nonce[:], b[9:9+NonceSize])
	rest := b[9+NonceSize:]
	fields := make([][]byte, 4)
	for i := range fields {
		if len(rest) < 2 {
			return nil, ErrLayerKeyEncoding
		}
		n := int(binary.BigEndian.Uint16(rest))
		if len(rest) < 2+n {
			return nil, ErrLayerKeyEncoding
		}
		fields[i], rest = rest[2:2+n], rest[2+n:]
	}
	if len(rest) != 0 || k.size < 0 {
		return nil, ErrLayerKeyEncoding
	}
	k.layer, k.plainDigest = digest.Digest(fields[2]), digest.Digest(fields[3])
	var errs []error
	if len(fields[0]) != 32 {
		errs = append(errs, fmt.Errorf("key of %d bytes", len(fields[0])))
	}
	if len(fields[1]) != 32 {
		errs = append(errs, fmt.Errorf("HMAC of %d bytes", len(fields[1])))
	}
	if err := k.layer.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("layer digest: %w", err))
	}
	if err := k.plainDigest.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("plain digest: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrLayerKeyEncoding, err)
	}
	k.key = append([]byte(nil), fields[0]...)
	k.wantMAC = append([]byte(nil), fields[1]...)
	block, err := aes.NewCipher(k.key)
	if err != nil {
		clear(k.key)
		return nil, fmt.Errorf("%w: %w", ErrLayerKeyEncoding, err)
	}
	k.block = block
	return k, nil
}
