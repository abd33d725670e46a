// Package katavolume is the KataVirtualVolume a host-side snapshotter hands
// Kata's runtimes in a rootfs mount option, so that the guest pulls the
// container image itself ("guest pull"). The JSON shape is the one kata-containers
// defines twice, in the Go runtime (src/runtime/virtcontainers/types/virtual_volume.go)
// and in runtime-rs (src/libs/kata-types/src/mount.rs), and nydus-snapshotter
// a third time (snapshot/mount_option.go); all read at kata-containers
// 7c6ba40c and nydus-snapshotter a7a1f071.
package katavolume

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// OptionPrefix starts the mount option carrying the volume: the Go runtime's
// VirtualVolumePrefix (virtcontainers/kata_agent.go), runtime-rs's
// KATA_VIRTUAL_VOLUME_PREFIX (kata-types/src/mount.rs), nydus's
// KataVirtualVolumeOptionName plus "=".
const OptionPrefix = "io.katacontainers.volume="

// TypeImageGuestPull is the volume type asking the guest to pull the image
// (KATA_VIRTUAL_VOLUME_IMAGE_GUEST_PULL).
const TypeImageGuestPull = "image_guest_pull"

// Volume is a KataVirtualVolume. Only what guest pull uses is typed; the
// other kinds (direct_block, raw and nydus block volumes, dm-verity) are
// not produced by cocoon.
type Volume struct {
	VolumeType string     `json:"volume_type"`
	Source     string     `json:"source,omitempty"`
	FSType     string     `json:"fs_type,omitempty"`
	Options    []string   `json:"options,omitempty"`
	ImagePull  *ImagePull `json:"image_pull,omitempty"`
}

// ImagePull is the image_pull object: metadata for the guest's pull (the
// runtimes merge the container's annotations into it).
type ImagePull struct {
	Metadata map[string]string `json:"metadata"`
}

// GuestPull returns an image_guest_pull volume for image ref with the
// snapshot labels as metadata.
func GuestPull(ref string, metadata map[string]string) *Volume {
	md := make(map[string]string, len(metadata))
	for k, v := range metadata {
		md[k] = v
	}
	return &Volume{VolumeType: TypeImageGuestPull, Source: ref, ImagePull: &ImagePull{Metadata: md}}
}

// Validate applies, to a guest-pull volume, every rule one of the three
// consumers applies: a volume type (Go runtime IsValid), a source (runtime-rs
// validate: "missing image reference for guest pulling volume") and
// image_pull metadata (nydus Validate: ImagePull.Metadata != nil).
func (v *Volume) Validate() error {
	switch {
	case v.VolumeType == "":
		return errors.New("kata virtual volume: no volume_type")
	case v.VolumeType != TypeImageGuestPull:
		return fmt.Errorf("kata virtual volume: volume_type %q is not %s", v.VolumeType, TypeImageGuestPull)
	case v.Source == "":
		return errors.New("kata virtual volume: guest pull without a source (image reference)")
	case v.ImagePull == nil || v.ImagePull.Metadata == nil:
		return errors.New("kata virtual volume: guest pull without image_pull.metadata")
	}
	return nil
}

// Option validates v and returns it as a mount option: the prefix and the
// standard base64 of its JSON, as both runtimes decode it.
func (v *Volume) Option() (string, error) {
	if err := v.Validate(); err != nil {
		return "", err
	}
	b, err := json.Marshal(v)
	if err != nil {
		return "", err
	}
	return OptionPrefix + base64.StdEncoding.EncodeToString(b), nil
}

// FromOptions finds the volume option among mount options and decodes it
// (not validated); ok is false when there is none.
func FromOptions(options []string) (v *Volume, ok bool, err error) {
	for _, o := range options {
		enc, found := strings.CutPrefix(o, OptionPrefix)
		if !found {
			continue
		}
		b, err := base64.StdEncoding.DecodeString(enc)
		if err != nil {
			return nil, true, fmt.Errorf("kata virtual volume option: %w", err)
		}
		v = &Volume{}
		if err := json.Unmarshal(b, v); err != nil {
			return nil, true, fmt.Errorf("kata virtual volume option: %w", err)
		}
		return v, true, nil
	}
	return nil, false, nil
}

// StripOptions returns options without the volume option, for a consumer
// that mounts plain overlay (runc, through the mount helper).
func StripOptions(options []string) []string {
	out := make([]string, 0, len(options))
	for _, o := range options {
		if !strings.HasPrefix(o, OptionPrefix) {
			out = append(out, o)
		}
	}
	return out
}
