package snapshotter

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
)

// maxImagesPerLayer bounds the images remembered per committed layer (the
// most recent are kept); the per-image verdicts are what admission uses.
const maxImagesPerLayer = 64

// ImageVerdict is the image security policy's acceptance of one image: the
// reference it was pulled by and its platform manifest digest, with the
// layer blobs that manifest names.
type ImageVerdict struct {
	Ref      string          `json:"ref"`
	Manifest digest.Digest   `json:"manifest"`
	Layers   []digest.Digest `json:"layers"`
	// Encrypted marks the layers the manifest names as encrypted.
	Encrypted []bool          `json:"encrypted_layers"`
	ChainIDs  []digest.Digest `json:"chain_ids"`
	Accepted  time.Time       `json:"accepted"`
}

// LayerRecord is what cocoond knows of a committed layer: the blob it was
// pulled from (for a decrypted layer, the encrypted blob) and the images
// accepted on it.
type LayerRecord struct {
	Blob      digest.Digest `json:"blob"`
	Encrypted bool          `json:"encrypted,omitempty"`
	// Lazy: the layer is served lazily from Blob; its diff ID is checked
	// only when the background fetch completes, so only images naming
	// Blob at its position may use it.
	Lazy   bool     `json:"lazy,omitempty"`
	Images []string `json:"images"` // "ref@manifest", most recent last
}

// verdictStore keeps verdicts in one JSON file under the snapshotter root,
// rewritten atomically on every change (verdicts change once per image
// pull, not per request).
type verdictStore struct {
	path string

	mu     sync.Mutex
	Images map[string]ImageVerdict `json:"images"` // "ref@manifest"
	Chains map[string]LayerRecord  `json:"layers"` // chain ID
}

func openVerdicts(root string) (*verdictStore, error) {
	v := &verdictStore{path: filepath.Join(root, "verdicts.json"), Images: map[string]ImageVerdict{}, Chains: map[string]LayerRecord{}}
	b, err := os.ReadFile(v.path)
	if os.IsNotExist(err) {
		return v, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read image verdicts: %w", err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return nil, fmt.Errorf("parse image verdicts %s: %w", v.path, err)
	}
	if v.Images == nil {
		v.Images = map[string]ImageVerdict{}
	}
	if v.Chains == nil {
		v.Chains = map[string]LayerRecord{}
	}
	return v, nil
}

func imageKey(ref string, manifest digest.Digest) string { return ref + "@" + manifest.String() }

// image returns the accepted verdict for (ref, manifest), if any.
func (v *verdictStore) image(ref string, manifest digest.Digest) (ImageVerdict, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	iv, ok := v.Images[imageKey(ref, manifest)]
	return iv, ok
}

func (v *verdictStore) layer(chainID string) (LayerRecord, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	r, ok := v.Chains[chainID]
	return r, ok
}

// record stores an accepted image and, when chainID is not empty, the
// layer it was committed or reused for.
func (v *verdictStore) record(iv ImageVerdict, chainID string, blob digest.Digest, encrypted bool) error {
	return v.recordLayer(iv, chainID, LayerRecord{Blob: blob, Encrypted: encrypted})
}

// recordLayer is record with the layer's record (used when the chain has
// none yet) given whole.
func (v *verdictStore) recordLayer(iv ImageVerdict, chainID string, rec LayerRecord) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	key := imageKey(iv.Ref, iv.Manifest)
	v.Images[key] = iv
	if chainID != "" {
		r, ok := v.Chains[chainID]
		if !ok {
			r = LayerRecord{Blob: rec.Blob, Encrypted: rec.Encrypted, Lazy: rec.Lazy}
		}
		imgs := make([]string, 0, len(r.Images)+1)
		for _, k := range r.Images {
			if k != key {
				imgs = append(imgs, k)
			}
		}
		imgs = append(imgs, key)
		if len(imgs) > maxImagesPerLayer {
			imgs = imgs[len(imgs)-maxImagesPerLayer:]
		}
		r.Images = imgs
		v.Chains[chainID] = r
	}
	return v.saveLocked()
}

// forget drops layer records of chain IDs no longer committed.
func (v *verdictStore) forget(chainID string) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if _, ok := v.Chains[chainID]; !ok {
		return nil
	}
	delete(v.Chains, chainID)
	return v.saveLocked()
}

func (v *verdictStore) saveLocked() error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	tmp := v.path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write image verdicts: %w", err)
	}
	if err := os.Rename(tmp, v.path); err != nil {
		return fmt.Errorf("write image verdicts: %w", err)
	}
	return nil
}

// imagesOn lists the images accepted on a layer, sorted.
func (r LayerRecord) imagesOn() []string {
	out := append([]string(nil), r.Images...)
	sort.Strings(out)
	return out
}
