// Package katarules checks a rootfs mount the way each consumer of a
// KataVirtualVolume does, rule by rule, for tests: nydus-snapshotter, the
// Kata Go runtime and Kata runtime-rs. It reads the raw JSON itself (not
// through cocoon's katavolume types), so a field cocoon's encoder got wrong
// fails here. Upstream files: nydus-snapshotter a7a1f071
// snapshot/mount_option.go; kata-containers 7c6ba40c
// src/runtime/virtcontainers/{kata_agent.go,types/virtual_volume.go,fs_share_linux.go},
// src/runtime/pkg/containerd-shim-v2/create.go,
// src/libs/kata-types/src/mount.rs,
// src/runtime-rs/crates/resource/src/rootfs/{mod.rs,virtual_volume.rs}.
package katarules

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strings"
)

// Mount is the part of a containerd mount the runtimes read.
type Mount struct {
	Type    string
	Source  string
	Options []string
}

const prefix = "io.katacontainers.volume="

// raw is the decoded volume, each field kept as JSON.
type raw map[string]json.RawMessage

// decode finds the volume option and base64 (standard alphabet) + JSON
// decodes it, as all three do.
func decode(m Mount) (raw, error) {
	for _, o := range m.Options {
		if enc, ok := strings.CutPrefix(o, prefix); ok {
			b, err := base64.StdEncoding.DecodeString(enc)
			if err != nil {
				return nil, fmt.Errorf("base64: %w", err)
			}
			var r raw
			if err := json.Unmarshal(b, &r); err != nil {
				return nil, fmt.Errorf("json: %w", err)
			}
			return r, nil
		}
	}
	return nil, errors.New("no " + prefix + " option")
}

func (r raw) str(k string) (string, bool, error) {
	v, ok := r[k]
	if !ok {
		return "", false, nil
	}
	var s string
	if err := json.Unmarshal(v, &s); err != nil {
		return "", true, fmt.Errorf("%s is not a string: %w", k, err)
	}
	return s, true, nil
}

// metadata returns image_pull.metadata (nil when absent or null).
func (r raw) metadata() (present bool, md map[string]string, err error) {
	v, ok := r["image_pull"]
	if !ok || string(v) == "null" {
		return false, nil, nil
	}
	var ip struct {
		Metadata map[string]string `json:"metadata"`
	}
	if err := json.Unmarshal(v, &ip); err != nil {
		return true, nil, fmt.Errorf("image_pull.metadata is not a string map: %w", err)
	}
	return true, ip.Metadata, nil
}

// Nydus applies nydus-snapshotter's KataVirtualVolume.Validate for
// image_guest_pull: image_pull present with non-nil metadata (and a known
// volume type: any other type fails its switch).
func Nydus(m Mount) error {
	r, err := decode(m)
	if err != nil {
		return err
	}
	vt, _, err := r.str("volume_type")
	if err != nil {
		return err
	}
	if vt != "image_guest_pull" {
		return fmt.Errorf("nydus: volume_type %q is not image_guest_pull", vt)
	}
	present, md, err := r.metadata()
	if err != nil {
		return err
	}
	if !present || md == nil {
		return errors.New("nydus: image_pull.metadata is nil")
	}
	return nil
}

// GoRuntime applies the Go runtime's rules: the shim leaves the rootfs
// unmounted on the host only for IsNydusRootFSType ("fuse." + a base name
// starting with nydus-overlayfs; checkAndMount), ShareRootFilesystem takes
// the virtual-volume path when an option has the prefix (HasOptionPrefix),
// ParseKataVirtualVolume requires IsValid (a non-empty volume_type; image_pull,
// when present, with non-nil metadata), handleVirtualVolume acts only on
// image_guest_pull, and handleImageGuestPullBlockVolume (kata_agent.go)
// writes the container's annotations into ImagePull.Metadata without a nil
// check: image_pull and its metadata must be there.
func GoRuntime(m Mount) error {
	name, ok := strings.CutPrefix(m.Type, "fuse.")
	if !ok || !strings.HasPrefix(path.Base(name), "nydus-overlayfs") {
		return fmt.Errorf("go runtime: type %q fails IsNydusRootFSType: the shim would mount the rootfs on the host", m.Type)
	}
	r, err := decode(m)
	if err != nil {
		return err
	}
	vt, _, err := r.str("volume_type")
	if err != nil {
		return err
	}
	if vt == "" {
		return errors.New("go runtime: IsValid: empty volume_type")
	}
	present, md, err := r.metadata()
	if err != nil {
		return err
	}
	if present && md == nil {
		return errors.New("go runtime: IsValid: image_pull without metadata")
	}
	if vt != "image_guest_pull" {
		return fmt.Errorf("go runtime: handleVirtualVolume ignores volume_type %q", vt)
	}
	if !present {
		return errors.New("go runtime: handleImageGuestPullBlockVolume: no image_pull (nil dereference)")
	}
	return nil
}

// RuntimeRS applies runtime-rs's rules: exactly one rootfs mount
// (is_single_layer_rootfs) carrying the prefix (is_kata_virtual_volume),
// serde decoding (volume_type a required string; source, fs_type strings;
// image_pull.metadata a string map) and validate(): image_guest_pull needs
// a non-empty source ("missing image reference for guest pulling volume").
func RuntimeRS(mounts []Mount) error {
	if len(mounts) != 1 {
		return fmt.Errorf("runtime-rs: %d rootfs mounts, guest pull needs exactly one", len(mounts))
	}
	r, err := decode(mounts[0])
	if err != nil {
		return err
	}
	vt, ok, err := r.str("volume_type")
	if err != nil {
		return err
	}
	if !ok {
		return errors.New("runtime-rs: serde: missing field volume_type")
	}
	for _, k := range []string{"source", "fs_type"} {
		if _, _, err := r.str(k); err != nil {
			return fmt.Errorf("runtime-rs: serde: %w", err)
		}
	}
	if _, _, err := r.metadata(); err != nil {
		return fmt.Errorf("runtime-rs: serde: %w", err)
	}
	src, _, _ := r.str("source")
	if vt == "image_guest_pull" && src == "" {
		return errors.New("runtime-rs: validate: missing image reference for guest pulling volume")
	}
	return nil
}

// All runs the three on mounts (the rootfs of one container).
func All(mounts []Mount) error {
	if err := RuntimeRS(mounts); err != nil {
		return err
	}
	if err := Nydus(mounts[0]); err != nil {
		return err
	}
	return GoRuntime(mounts[0])
}
