package e2e

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strings"
)

// The Kata validators' rules, applied to the rootfs mounts the CRI plugin
// handed the runtime. The root module's internal/katarules holds the same
// rules for the unit tests (this module does not import cocoon); upstream:
// nydus-snapshotter a7a1f071 snapshot/mount_option.go (Validate),
// kata-containers 7c6ba40c src/runtime/virtcontainers/kata_agent.go
// (IsNydusRootFSType, handleImageGuestPullBlockVolume), types/virtual_volume.go (IsValid),
// src/runtime/pkg/containerd-shim-v2/create.go (checkAndMount),
// src/libs/kata-types/src/mount.rs (serde fields, validate()),
// src/runtime-rs/crates/resource/src/rootfs/mod.rs (single mount,
// is_guest_pull_volume).

const kataVolumePrefix = "io.katacontainers.volume="

// kataVolume is the decoded option; fields absent in the JSON stay nil so
// that "present" and "empty" differ, as serde and encoding/json tell them.
type kataVolume struct {
	VolumeType *string `json:"volume_type"`
	Source     *string `json:"source"`
	FSType     *string `json:"fs_type"`
	ImagePull  *struct {
		Metadata map[string]string `json:"metadata"`
	} `json:"image_pull"`
}

func decodeKataVolume(options []string) (*kataVolume, error) {
	n := 0
	var v kataVolume
	for _, o := range options {
		enc, ok := strings.CutPrefix(o, kataVolumePrefix)
		if !ok {
			continue
		}
		n++
		b, err := base64.StdEncoding.DecodeString(enc)
		if err != nil {
			return nil, fmt.Errorf("base64 (StdEncoding, as both runtimes): %w", err)
		}
		// Strings must be strings and metadata a string map: serde's
		// HashMap<String, String>, Go's map[string]string.
		if err := json.Unmarshal(b, &v); err != nil {
			return nil, fmt.Errorf("JSON: %w", err)
		}
	}
	if n != 1 {
		return nil, fmt.Errorf("%d %s options, want 1", n, kataVolumePrefix)
	}
	return &v, nil
}

// checkKataRootfs applies the three consumers' rules to one container's
// rootfs mounts (type, options).
func checkKataRootfs(mounts int, typ string, options []string) (*kataVolume, error) {
	// runtime-rs: is_single_layer_rootfs, then is_kata_virtual_volume.
	if mounts != 1 {
		return nil, fmt.Errorf("runtime-rs: %d rootfs mounts, guest pull needs 1", mounts)
	}
	v, err := decodeKataVolume(options)
	if err != nil {
		return nil, err
	}
	// Go runtime: checkAndMount leaves the rootfs to the guest only for
	// IsNydusRootFSType; IsValid wants a volume type and metadata in a
	// present image_pull; handleVirtualVolume acts on image_guest_pull.
	name, ok := strings.CutPrefix(typ, "fuse.")
	if !ok || !strings.HasPrefix(path.Base(name), "nydus-overlayfs") {
		return nil, fmt.Errorf("go runtime: type %q fails IsNydusRootFSType", typ)
	}
	if v.VolumeType == nil {
		return nil, errors.New("runtime-rs: serde: missing field volume_type")
	}
	if *v.VolumeType != "image_guest_pull" {
		return nil, fmt.Errorf("volume_type %q, want image_guest_pull", *v.VolumeType)
	}
	// nydus Validate (image_guest_pull): ImagePull != nil && Metadata != nil;
	// the Go runtime's ImagePullVolume.IsValid, and its
	// handleImageGuestPullBlockVolume writing annotations into that map.
	if v.ImagePull == nil || v.ImagePull.Metadata == nil {
		return nil, errors.New("nydus/go runtime: image_pull.metadata is nil")
	}
	// runtime-rs validate(): image_guest_pull needs a source.
	if v.Source == nil || *v.Source == "" {
		return nil, errors.New("runtime-rs: missing image reference for guest pulling volume")
	}
	return v, nil
}
