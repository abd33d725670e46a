package katavolume

import (
	"encoding/base64"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// TestOptionRoundTrip: the option is the prefix and standard base64 of
// the JSON with upstream's field names; FromOptions reads it back.
func TestOptionRoundTrip(t *testing.T) {
	v := GuestPull("r.example/a:1", map[string]string{"containerd.io/snapshot/cri.layer-digest": "sha256:1"})
	opt, err := v.Option()
	if err != nil {
		t.Fatal(err)
	}
	b, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(opt, "io.katacontainers.volume="))
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]any
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"volume_type": "image_guest_pull", "source": "r.example/a:1",
		"image_pull": map[string]any{"metadata": map[string]any{"containerd.io/snapshot/cri.layer-digest": "sha256:1"}}}
	if !reflect.DeepEqual(raw, want) {
		t.Fatalf("JSON %s, want %v", b, want)
	}
	got, ok, err := FromOptions([]string{"lowerdir=/a", opt})
	if err != nil || !ok || !reflect.DeepEqual(got, v) {
		t.Fatalf("FromOptions = %+v %v %v", got, ok, err)
	}
	if _, ok, _ := FromOptions([]string{"lowerdir=/a"}); ok {
		t.Fatal("found a volume in plain options")
	}
	if s := StripOptions([]string{"lowerdir=/a", opt, "upperdir=/u"}); !reflect.DeepEqual(s, []string{"lowerdir=/a", "upperdir=/u"}) {
		t.Fatalf("StripOptions = %v", s)
	}
}

// TestValidate: no volume without type, source or metadata is encoded.
func TestValidate(t *testing.T) {
	for _, v := range []*Volume{
		{Source: "x", ImagePull: &ImagePull{Metadata: map[string]string{}}},
		{VolumeType: TypeImageGuestPull, ImagePull: &ImagePull{Metadata: map[string]string{}}},
		{VolumeType: TypeImageGuestPull, Source: "x"},
		{VolumeType: TypeImageGuestPull, Source: "x", ImagePull: &ImagePull{}},
		{VolumeType: "direct_block", Source: "x", ImagePull: &ImagePull{Metadata: map[string]string{}}},
	} {
		if _, err := v.Option(); err == nil {
			t.Errorf("%+v encoded", v)
		}
	}
	if _, err := GuestPull("x", nil).Option(); err != nil {
		t.Fatalf("nil labels give empty, non-nil metadata: %v", err)
	}
}

// TestParseHelperArgs: mount.fuse's and containerd's argument forms.
func TestParseHelperArgs(t *testing.T) {
	fuse, err := ParseHelperArgs([]string{"overlay", "/m", "-o", "lowerdir=/l,upperdir=/u,workdir=/w,io.katacontainers.volume=e30=,dev,suid"})
	if err != nil {
		t.Fatal(err)
	}
	ctrd, err := ParseHelperArgs([]string{"overlay", "/m", "-o", "lowerdir=/l", "-o", "upperdir=/u", "-o", "workdir=/w",
		"-o", "io.katacontainers.volume=e30=", "-o", "dev,suid", "-t", "nydus-overlayfs-cocoon"})
	if err != nil {
		t.Fatal(err)
	}
	if ctrd.Type != "nydus-overlayfs-cocoon" || !reflect.DeepEqual(fuse.Options, ctrd.Options) || fuse.Target != "/m" || fuse.Source != "overlay" {
		t.Fatalf("fuse form %+v, containerd form %+v", fuse, ctrd)
	}
	opts, err := fuse.OverlayOptions()
	if err != nil || !reflect.DeepEqual(opts, []string{"lowerdir=/l", "upperdir=/u", "workdir=/w", "dev", "suid"}) {
		t.Fatalf("OverlayOptions = %v %v", opts, err)
	}
	for _, bad := range [][]string{
		{"overlay"},
		{"overlay", "/m", "extra"},
		{"overlay", "/m", "-o"},
		{"overlay", "/m", "-x", "y"},
		{"overlay", "/m", "-o", "lowerdir=/l", "-t", "sshfs"},
	} {
		if _, err := ParseHelperArgs(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if _, err := (HelperRequest{Options: []string{"io.katacontainers.volume=e30="}}).OverlayOptions(); err == nil {
		t.Error("options without lowerdir accepted")
	}
}
