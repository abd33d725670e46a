package server

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/cocoon-cc/cocoon/image/registry"
)

// The protocol is length-prefixed JSON over the unix socket: a 4-byte
// big-endian length, then a request object, then a second frame with the
// request's secret bytes (empty but for Configure's credentials and an
// encrypted Mount's layer key), kept out of the JSON so that no encoder
// buffer ever holds them. The server answers each request with a response
// object framed the same way, in order. A connection carries any number of
// requests. JSON keeps it inspectable and needs no generated code; the
// messages are small (a registry configuration, a descriptor).
const maxMessage = 16 << 20

// Operations.
const (
	opConfigure = "configure"
	opMount     = "mount"
	opUnmount   = "unmount"
	opList      = "list"
	opMetrics   = "metrics"
)

// Config is what the server needs to fetch and keep layers: a serialisable
// subset of image/registry.Options (it builds the same registry.Client
// from it) and where completed layers go. AuthFile is a SECRET
// (containers-auth.json credentials); it is only ever sent over the socket
// and kept in the server's memory.
type Config struct {
	// Insecure lists registries (host[:port]) reached over plain HTTP.
	Insecure []string `json:"insecure,omitempty"`
	// Network is the proxy and extra root CAs (PEM).
	Network registry.TransportOptions `json:"network"`
	// Hosts is the registries configuration (mirrors, remaps, blocked
	// prefixes, insecure registries).
	Hosts *registry.Hosts `json:"hosts,omitempty"`
	// AuthFile is a containers-auth.json document (secret); empty means
	// anonymous.
	// It travels in the secret frame, never in the JSON.
	AuthFile []byte `json:"-"`
	// Retries and RetryBackoff as in registry.Options (0: its defaults).
	Retries      int   `json:"retries,omitempty"`
	RetryBackoff int64 `json:"retry_backoff_ns,omitempty"`

	// CacheDir receives the completed local copy of every layer, in a
	// directory per mount point (removed by Unmount), named by the blob
	// digest's hex. For an encrypted layer the copy is the
	// decrypted (still compressed) blob: put CacheDir on the encrypted
	// storage volume or on tmpfs, never on plain disk. Empty: layers are
	// never completed and stay lazy.
	CacheDir string `json:"cache_dir,omitempty"`
	// CacheBytes bounds the shared in-memory chunk cache (default
	// fusefs.DefaultCacheBytes). Only the first Configure sets it.
	CacheBytes int64 `json:"cache_bytes,omitempty"`
	// CoalesceGap is fusefs.Options.CoalesceGap for the mounts that follow
	// (0: its default).
	CoalesceGap int64 `json:"coalesce_gap,omitempty"`
	// Prefetch fetches each layer's prioritized files (the
	// .prefetch.landmark convention) right after mounting.
	Prefetch bool `json:"prefetch,omitempty"`
	// CompletionConcurrency bounds the layers whose background fetch runs
	// at once (0: no bound). Only the first Configure sets it.
	CompletionConcurrency int `json:"completion_concurrency,omitempty"`
}

// LayerSpec names one lazy layer: the snapshotter's LazyLayer plus the
// unwrapped key of an encrypted layer.
type LayerSpec struct {
	// ImageRef is the image reference the layer is pulled for; the server
	// resolves it to repositories (mirrors first) with its Config.
	ImageRef string `json:"image_ref"`
	// Manifest is the digest of the manifest (fetched by digest and
	// accepted by the image policy) that names the layer; for logs.
	Manifest digest.Digest `json:"manifest,omitempty"`
	// Blob is the layer descriptor (encrypted media type for an encrypted
	// layer).
	Blob ocispec.Descriptor `json:"blob"`
	// DiffID is the layer's uncompressed digest from the image config.
	DiffID digest.Digest `json:"diff_id"`
	// TOCDigest is the descriptor's containerd.io/snapshot/stargz/toc.digest.
	TOCDigest digest.Digest `json:"toc_digest"`
	// Encrypted layers need a key: the client ships it (see Client.Mount).
	Encrypted bool `json:"encrypted,omitempty"`
}

// NewLayerSpec builds a LayerSpec from the fields of the snapshotter's
// LazyLayer, in its order, so an adapter is one line.
func NewLayerSpec(imageRef string, manifest digest.Digest, blob ocispec.Descriptor, diffID, tocDigest digest.Digest, encrypted bool) LayerSpec {
	return LayerSpec{ImageRef: imageRef, Manifest: manifest, Blob: blob, DiffID: diffID, TOCDigest: tocDigest, Encrypted: encrypted}
}

// Mount states in List.
const (
	StateFetching = "fetching" // served lazily; the background fetch has not finished
	StateComplete = "complete" // the blob is local and verified; reads are local
	StateBad      = "bad"      // the completed blob failed its checks; reads fail
	StateLazy     = "lazy"     // served lazily; no background fetch (no CacheDir)
)

// MountInfo describes one mount in List.
type MountInfo struct {
	Dir       string        `json:"dir"`
	Layer     digest.Digest `json:"layer"`
	ImageRef  string        `json:"image_ref"`
	Encrypted bool          `json:"encrypted,omitempty"`
	State     string        `json:"state"`
	// Error is the last background fetch error, or why the layer is bad.
	Error string `json:"error,omitempty"`
}

type request struct {
	Op     string     `json:"op"`
	Config *Config    `json:"config,omitempty"`
	Dir    string     `json:"dir,omitempty"`
	Layer  *LayerSpec `json:"layer,omitempty"`
	// secret is the secret frame: Config.AuthFile, or a marshalled
	// decrypt.LayerKey.
	secret []byte
}

type response struct {
	Error  string      `json:"error,omitempty"`
	Mounts []MountInfo `json:"mounts,omitempty"`
	// Metrics is the Prometheus text exposition of the server's registry.
	Metrics string `json:"metrics,omitempty"`
}

// writeRequest frames req and its secret (written from the caller's
// slice, not copied).
func writeRequest(w io.Writer, req *request) error {
	if err := writeMsg(w, req); err != nil {
		return err
	}
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], uint32(len(req.secret)))
	if _, err := w.Write(hdr[:]); err != nil {
		return err
	}
	if len(req.secret) == 0 {
		return nil
	}
	_, err := w.Write(req.secret)
	return err
}

// readRequest reads a request and its secret; the caller clears
// req.secret.
func readRequest(r io.Reader, req *request) error {
	if err := readMsg(r, req); err != nil {
		return err
	}
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > maxMessage {
		return fmt.Errorf("secret of %d bytes exceeds %d", n, maxMessage)
	}
	if n == 0 {
		return nil
	}
	req.secret = make([]byte, n)
	if _, err := io.ReadFull(r, req.secret); err != nil {
		clear(req.secret)
		return err
	}
	return nil
}

// writeMsg frames v (no secrets: those go in writeRequest's second frame).
func writeMsg(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if len(b) > maxMessage {
		return fmt.Errorf("message of %d bytes exceeds %d", len(b), maxMessage)
	}
	buf := make([]byte, 4+len(b))
	binary.BigEndian.PutUint32(buf, uint32(len(b)))
	copy(buf[4:], b)
	_, err = w.Write(buf)
	return err
}

// readMsg reads one frame into v.
func readMsg(r io.Reader, v any) error {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > maxMessage {
		return fmt.Errorf("message of %d bytes exceeds %d", n, maxMessage)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	return json.Unmarshal(b, v)
}
