package katavolume

import (
	"errors"
	"fmt"
	"path"
	"strings"
)

// HelperRequest is what a mount helper for the Kata rootfs type was asked
// to mount.
type HelperRequest struct {
	Source  string
	Target  string
	Options []string // every -o value split on commas, in order
	Type    string   // -t value, when given
}

// ParseHelperArgs reads a mount helper's arguments in the two forms it is
// called with: by fuse's mount.fuse/mount.fuse3, "SOURCE TARGET -o opt,opt",
// and by containerd (core/mount mountWithHelper, when the helper stands in
// for mount.fuse), "SOURCE TARGET -o opt -o opt ... -t TYPE". A -t type
// must name a nydus-overlayfs helper: the only kind this helper mounts.
func ParseHelperArgs(args []string) (HelperRequest, error) {
	var r HelperRequest
	var pos []string
	for rest := args; len(rest) > 0; {
		a := rest[0]
		rest = rest[1:]
		if a != "-o" && a != "-t" {
			if strings.HasPrefix(a, "-") {
				return r, fmt.Errorf("unknown flag %q", a)
			}
			pos = append(pos, a)
			continue
		}
		if len(rest) == 0 {
			return r, fmt.Errorf("%s without a value", a)
		}
		val := rest[0]
		rest = rest[1:]
		if a == "-t" {
			r.Type = val
			continue
		}
		for _, o := range strings.Split(val, ",") {
			if o != "" {
				r.Options = append(r.Options, o)
			}
		}
	}
	if len(pos) != 2 {
		return r, fmt.Errorf("want SOURCE TARGET [-o OPTIONS] [-t TYPE], got %d positional arguments", len(pos))
	}
	r.Source, r.Target = pos[0], pos[1]
	if r.Target == "" {
		return r, errors.New("empty mount target")
	}
	if r.Type != "" && !strings.HasPrefix(path.Base(r.Type), "nydus-overlayfs") {
		return r, fmt.Errorf("type %q: this helper mounts only nydus-overlayfs types (overlay with a Kata volume option)", r.Type)
	}
	return r, nil
}

// OverlayOptions are the request's options for a plain overlay mount: the
// Kata volume option (meaningless on the host) removed.
func (r HelperRequest) OverlayOptions() ([]string, error) {
	opts := StripOptions(r.Options)
	for _, o := range opts {
		if strings.HasPrefix(o, "lowerdir=") {
			return opts, nil
		}
	}
	return nil, errors.New("no lowerdir option: not an overlay mount")
}
