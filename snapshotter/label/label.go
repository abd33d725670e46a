// Package label names every containerd, CRI and Kata label cocoon reads or
// writes on snapshots, in one place. Code elsewhere refers to these
// constants, never to literal strings.
package label

const (
	// TargetSnapshotRef is the chain ID of the committed snapshot an
	// image-layer Prepare should produce (containerd's
	// snapshots.LabelSnapshotRef).
	TargetSnapshotRef = "containerd.io/snapshot.ref"
	// DiffID is the uncompressed digest of the layer being unpacked.
	DiffID = "containerd.io/snapshot/diff-id"
	// ParentChainID is the chain ID of the layer below (layers after the
	// first).
	ParentChainID = "containerd.io/snapshot/parent-chain-id"

	// CRI target labels (containerd pkg/snapshotters; the "cri" prefix is
	// historical: the transfer service sets them too when the proxy plugin
	// exports enable_remote_snapshot_annotations).
	CRIImageRef       = "containerd.io/snapshot/cri.image-ref"
	CRILayerDigest    = "containerd.io/snapshot/cri.layer-digest"
	CRIManifestDigest = "containerd.io/snapshot/cri.manifest-digest"
	CRIImageLayers    = "containerd.io/snapshot/cri.image-layers"

	// TOCDigest is the eStargz layer descriptor annotation naming the
	// digest of the layer's TOC JSON (stargz-snapshotter's
	// estargz.TOCJSONDigestAnnotation). containerd forwards every layer
	// annotation under containerd.io/snapshot/ to the Prepare as a label
	// (snapshots.FilterInheritedLabels in its unpacker), but cocoon takes
	// the digest from the verified manifest and only checks the label
	// against it.
	TOCDigest = "containerd.io/snapshot/stargz/toc.digest"

	// OverlayUpperdir is the label containerd's overlay snapshotter adds,
	// when opened WithUpperdirLabel, to the Info of every snapshot: the path
	// of its upper directory (as stargz and nydus read it).
	OverlayUpperdir = "containerd.io/snapshot/overlay.upperdir"

	// Staging marks an active snapshot cocoon created to commit a guest-pulled
	// layer. One left behind by a crash is removed at start.
	Staging = "cocoon.io/staging"
	// Lazy marks committed snapshots whose directory is a lazily mounted
	// eStargz layer (value: the layer digest); their verified descriptor
	// is kept next to the directory, in lazy.json.
	Lazy = "cocoon.io/lazy"
	// GuestPulled marks committed snapshots whose content cocoon fetched and
	// verified itself (value: the layer digest).
	GuestPulled = "cocoon.io/guest-pulled"
	// KataHost marks a committed image layer that cocoond in kata-host mode
	// recorded without fetching it: an empty directory standing for a layer
	// the Kata guest pulls itself (value: the layer digest).
	KataHost = "cocoon.io/kata-host"
	// KataRecovered marks a committed placeholder kata-host mode created for
	// a parent containerd named but the metadata store no longer held (lost
	// or restored from an older copy); value: Unix time of the recovery.
	KataRecovered = "cocoon.io/kata-recovered"
	// KataFallback is set ("true") in the image_pull metadata of the Kata
	// volume on a rootfs whose layers cocoon did not record for guest pull
	// (containerd applied them, e.g. the pause image before kata-host mode).
	KataFallback = "cocoon.io/kata-fallback"
	// Bundle marks the active snapshot of an OCI bundle's rootfs that
	// kata/bundle pulled for the Kata agent (value: the bundle path).
	Bundle = "cocoon.io/bundle"
)
