// Package engine is the seam between cryptvol and the ways of presenting a
// LUKS2 data segment as a decrypted block device: the kernel's dm-crypt
// (package dmcrypt) or a userspace AES-XTS engine (package userspace).
//
// An engine receives the volume key only to set up the mapping; it copies
// what it must keep and never writes the key anywhere but into the kernel
// (dm-crypt) or its own memory (userspace). It never logs a key.
package engine

import (
	"context"
	"fmt"
)

// Target describes the ciphertext to map.
type Target struct {
	// Name identifies the mapping (device-mapper name, FUSE fs name); it
	// must be unique on the host.
	Name string
	// Backing is the block device or regular file holding the ciphertext.
	Backing string
	// Offset is the byte offset of the data segment in Backing.
	Offset int64
	// Size is the number of decrypted bytes (a multiple of SectorSize).
	Size int64
	// Cipher is the dm-crypt cipher specification; only "aes-xts-plain64".
	Cipher string
	// Key is the volume key. Engines copy it; the caller zeroizes it.
	Key []byte
	// SectorSize is the encryption sector size (512..4096).
	SectorSize int
	// IVTweak is added to the IV sector number (LUKS2 segment iv_tweak),
	// in 512-byte units like the IV itself.
	IVTweak uint64
}

// Validate checks what every engine needs.
func (t *Target) Validate() error {
	switch {
	case t.Cipher != "aes-xts-plain64":
		return fmt.Errorf("cipher %q not supported (only aes-xts-plain64)", t.Cipher)
	case len(t.Key) != 32 && len(t.Key) != 64:
		return fmt.Errorf("aes-xts key must be 32 or 64 bytes, got %d", len(t.Key))
	case t.SectorSize != 512 && t.SectorSize != 1024 && t.SectorSize != 2048 && t.SectorSize != 4096:
		return fmt.Errorf("sector size %d", t.SectorSize)
	case t.Offset < 0 || t.Offset%512 != 0:
		return fmt.Errorf("segment offset %d not a multiple of 512", t.Offset)
	case t.Size <= 0 || t.Size%int64(t.SectorSize) != 0:
		return fmt.Errorf("data size %d not a positive multiple of the sector size %d", t.Size, t.SectorSize)
	case t.Name == "" || t.Backing == "":
		return fmt.Errorf("target needs a name and a backing device")
	}
	return nil
}

// Engine maps a Target to a block device holding the plaintext.
type Engine interface {
	// Name is "dmcrypt" or "userspace".
	Name() string
	Attach(ctx context.Context, t Target) (Device, error)
}

// Device is an attached mapping.
type Device interface {
	// Path is the plaintext block device (/dev/mapper/NAME, /dev/loopN).
	Path() string
	// Detach removes the mapping and forgets the key. The block device must
	// no longer be mounted.
	Detach(ctx context.Context) error
}
