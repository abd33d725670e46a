package harness

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Media types the harness reads and writes.
const (
	MediaTypeOCIManifest    = "application/vnd.oci.image.manifest.v1+json"
	MediaTypeDockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
	MediaTypeOCILayerGzip   = "application/vnd.oci.image.layer.v1.tar+gzip"
	MediaTypeOCILayerZstd   = "application/vnd.oci.image.layer.v1.tar+zstd"
	MediaTypeDockerLayer    = "application/vnd.docker.image.rootfs.diff.tar.gzip"
)

// Registry is a `crane registry serve` process on 127.0.0.1 storing blobs
// under Disk.
type Registry struct {
	// Host is "127.0.0.1:PORT", the registry part of image references.
	Host string
	// Disk is crane's blob store: Disk/sha256/<hex>.
	Disk string
	Proc *Process

	env    *Env
	client *http.Client
}

// StartRegistry starts a crane registry on a free loopback port.
func (e *Env) StartRegistry(ctx context.Context) (*Registry, error) {
	disk := e.Path("registry")
	if err := os.MkdirAll(disk, 0o755); err != nil {
		return nil, err
	}
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port, err := FreePort()
		if err != nil {
			return nil, fmt.Errorf("registry: free port: %w", err)
		}
		host := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		p, err := e.StartProcess("registry", e.Tool("crane"), []string{"registry", "serve", "--address", host, "--disk", disk}, nil)
		if err != nil {
			return nil, err
		}
		if err := p.WaitHTTP(ctx, "http://"+host+"/v2/"); err != nil {
			// Most likely someone took the port between FreePort and bind.
			lastErr = err
			_ = p.Stop(5 * time.Second)
			continue
		}
		return &Registry{Host: host, Disk: disk, Proc: p, env: e, client: &http.Client{Timeout: 5 * time.Minute}}, nil
	}
	return nil, fmt.Errorf("registry did not start: %w", lastErr)
}

// Ref returns HOST/repo:tag.
func (r *Registry) Ref(repo, tag string) string { return r.Host + "/" + repo + ":" + tag }

// BlobPath is where crane's disk store keeps the blob with digest d.
func (r *Registry) BlobPath(d string) string {
	alg, hexPart, _ := strings.Cut(d, ":")
	return filepath.Join(r.Disk, alg, hexPart)
}

// Crane runs crane with args (plus --insecure) and returns its stdout.
func (r *Registry) Crane(ctx context.Context, args ...string) (string, error) {
	return runTool(ctx, r.env, r.env.Tool("crane"), append(args, "--insecure")...)
}

// Descriptor is an OCI content descriptor.
type Descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// Manifest is an OCI or Docker schema2 image manifest.
type Manifest struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Config        Descriptor   `json:"config"`
	Layers        []Descriptor `json:"layers"`
}

// ImageConfig is the part of an image config the harness needs.
type ImageConfig struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
	RootFS       struct {
		Type    string   `json:"type"`
		DiffIDs []string `json:"diff_ids"`
	} `json:"rootfs"`
}

// Image is an image pushed to a Registry.
type Image struct {
	Ref            string // HOST/repo:tag
	Repo, Tag      string
	ManifestDigest string
	ManifestRaw    []byte
	Manifest       Manifest
	Config         ImageConfig
}

// LayerDigests lists the compressed layer digests, bottom first.
func (im *Image) LayerDigests() []string {
	var out []string
	for _, l := range im.Manifest.Layers {
		out = append(out, l.Digest)
	}
	return out
}

// LayerBytes is the sum of the compressed layer sizes.
func (im *Image) LayerBytes() int64 {
	var n int64
	for _, l := range im.Manifest.Layers {
		n += l.Size
	}
	return n
}

// ChainIDs returns the chain ID of every layer, bottom first: the snapshot
// names containerd gives committed layers.
func (im *Image) ChainIDs() []string { return ChainIDs(im.Config.RootFS.DiffIDs) }

// ChainIDs computes OCI chain IDs from diff IDs.
func ChainIDs(diffIDs []string) []string {
	var out []string
	for i, d := range diffIDs {
		if i == 0 {
			out = append(out, d)
			continue
		}
		sum := sha256.Sum256([]byte(out[i-1] + " " + d))
		out = append(out, "sha256:"+hex.EncodeToString(sum[:]))
	}
	return out
}

// ImageSpec describes an image to push with crane.
type ImageSpec struct {
	Repo, Tag string
	// Layers are files, bottom first: plain tars (crane gzips them), or
	// already compressed .tar.gz / .tar.zst files (pushed as they are).
	Layers []string
	// Docker selects Docker schema2 media types instead of OCI.
	Docker bool
	// Cmd is the image's default command. crane's --cmd flag splits on
	// commas, so no element may contain one.
	Cmd []string
}

// Push pushes an image with `crane append` and `crane mutate` (platform
// linux/amd64, Cmd) and reads back its manifest and config.
func (r *Registry) Push(ctx context.Context, spec ImageSpec) (*Image, error) {
	ref := r.Ref(spec.Repo, spec.Tag)
	for _, a := range spec.Cmd {
		if strings.Contains(a, ",") {
			return nil, fmt.Errorf("image %s: Cmd element %q contains a comma, which crane --cmd would split", ref, a)
		}
	}
	args := []string{"append", "-t", ref}
	if !spec.Docker {
		args = append(args, "--oci-empty-base")
	}
	for _, l := range spec.Layers {
		args = append(args, "-f", l)
	}
	if _, err := r.Crane(ctx, args...); err != nil {
		return nil, err
	}
	args = []string{"mutate", ref, "-t", ref, "--set-platform", "linux/amd64"}
	if len(spec.Cmd) > 0 {
		args = append(args, "--cmd", strings.Join(spec.Cmd, ","))
	}
	if _, err := r.Crane(ctx, args...); err != nil {
		return nil, err
	}
	return r.Image(ctx, spec.Repo, spec.Tag)
}

// Image reads an image's manifest and config from the registry.
func (r *Registry) Image(ctx context.Context, repo, tag string) (*Image, error) {
	raw, digest, err := r.GetManifest(ctx, repo, tag)
	if err != nil {
		return nil, err
	}
	im := &Image{Ref: r.Ref(repo, tag), Repo: repo, Tag: tag, ManifestDigest: digest, ManifestRaw: raw}
	if err := json.Unmarshal(raw, &im.Manifest); err != nil {
		return nil, fmt.Errorf("parsing manifest of %s: %w", im.Ref, err)
	}
	cfg, err := r.GetBlob(ctx, repo, im.Manifest.Config.Digest)
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(cfg, &im.Config); err != nil {
		return nil, fmt.Errorf("parsing config of %s: %w", im.Ref, err)
	}
	if len(im.Config.RootFS.DiffIDs) != len(im.Manifest.Layers) {
		return nil, fmt.Errorf("%s: %d diff IDs for %d layers", im.Ref, len(im.Config.RootFS.DiffIDs), len(im.Manifest.Layers))
	}
	return im, nil
}

// GetManifest fetches a manifest by tag or digest and returns it with its
// digest.
func (r *Registry) GetManifest(ctx context.Context, repo, reference string) ([]byte, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://%s/v2/%s/manifests/%s", r.Host, repo, reference), nil)
	if err != nil {
		return nil, "", err
	}
	req.Header.Set("Accept", MediaTypeOCIManifest+", "+MediaTypeDockerManifest)
	body, err := r.do(req, http.StatusOK)
	if err != nil {
		return nil, "", err
	}
	return body, digestOf(body), nil
}

// PutManifest uploads a manifest under reference and returns its digest.
func (r *Registry) PutManifest(ctx context.Context, repo, reference, mediaType string, body []byte) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, fmt.Sprintf("http://%s/v2/%s/manifests/%s", r.Host, repo, reference), bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", mediaType)
	if _, err := r.do(req, http.StatusCreated); err != nil {
		return "", err
	}
	return digestOf(body), nil
}

// GetBlob fetches a blob.
func (r *Registry) GetBlob(ctx context.Context, repo, digest string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://%s/v2/%s/blobs/%s", r.Host, repo, digest), nil)
	if err != nil {
		return nil, err
	}
	return r.do(req, http.StatusOK)
}

// PutBlob uploads a blob in one request and returns its digest.
func (r *Registry) PutBlob(ctx context.Context, repo string, data []byte) (string, error) {
	d := digestOf(data)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, fmt.Sprintf("http://%s/v2/%s/blobs/uploads/?digest=%s", r.Host, repo, d), bytes.NewReader(data))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	if _, err := r.do(req, http.StatusCreated); err != nil {
		return "", err
	}
	return d, nil
}

// PushWithConfig uploads a modified copy of im's config (edit changes the
// decoded JSON) and a manifest pointing at it, tagged newTag. Layers are
// shared with im.
func (r *Registry) PushWithConfig(ctx context.Context, im *Image, newTag string, edit func(cfg map[string]any) error) (*Image, error) {
	raw, err := r.GetBlob(ctx, im.Repo, im.Manifest.Config.Digest)
	if err != nil {
		return nil, err
	}
	var cfg map[string]any
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return nil, err
	}
	if err := edit(cfg); err != nil {
		return nil, err
	}
	newCfg, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	cfgDigest, err := r.PutBlob(ctx, im.Repo, newCfg)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(im.ManifestRaw, &m); err != nil {
		return nil, err
	}
	c, ok := m["config"].(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%s: manifest has no config descriptor", im.Ref)
	}
	c["digest"], c["size"] = cfgDigest, len(newCfg)
	body, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	mt, _ := m["mediaType"].(string)
	if mt == "" {
		mt = MediaTypeOCIManifest
	}
	if _, err := r.PutManifest(ctx, im.Repo, newTag, mt, body); err != nil {
		return nil, err
	}
	return r.Image(ctx, im.Repo, newTag)
}

// SetLayerMediaType rewrites the media type of layer index in the image's
// manifest and re-uploads the manifest under the same tag. crane labels
// every layer it appends as gzip; a zstd layer needs this.
func (r *Registry) SetLayerMediaType(ctx context.Context, im *Image, index int, mediaType string) (*Image, error) {
	var m map[string]any
	if err := json.Unmarshal(im.ManifestRaw, &m); err != nil {
		return nil, err
	}
	layers, ok := m["layers"].([]any)
	if !ok || index < 0 || index >= len(layers) {
		return nil, fmt.Errorf("%s: no layer %d in manifest", im.Ref, index)
	}
	layers[index].(map[string]any)["mediaType"] = mediaType
	body, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	mt, _ := m["mediaType"].(string)
	if mt == "" {
		mt = MediaTypeOCIManifest
	}
	if _, err := r.PutManifest(ctx, im.Repo, im.Tag, mt, body); err != nil {
		return nil, err
	}
	return r.Image(ctx, im.Repo, im.Tag)
}

func (r *Registry) do(req *http.Request, want int) ([]byte, error) {
	resp, err := r.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != want {
		return nil, fmt.Errorf("%s %s: %s: %s", req.Method, req.URL, resp.Status, bytes.TrimSpace(body))
	}
	return body, nil
}

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// TamperProxy is an in-process HTTP proxy in front of a Registry that
// serves replacement bytes for chosen blobs, like a compromised registry or
// a man in the middle would. It exists because crane's disk store re-hashes
// a blob on every read and answers 404 when the file on disk was altered,
// so tampering with the disk store alone never delivers bad bytes.
type TamperProxy struct {
	// Host is "127.0.0.1:PORT": pull through this instead of the registry.
	Host string

	mu      sync.Mutex
	replace map[string][]byte
	served  map[string]int
	endless map[string]bool
	sent    map[string]int64
	// forwarded counts the body bytes of blob GETs passed through from
	// the registry, by digest (what a lazy pull fetched).
	forwarded map[string]int64
	srv       *http.Server
}

// StartTamperProxy starts a TamperProxy for r, stopped at cleanup.
func (r *Registry) StartTamperProxy() (*TamperProxy, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &TamperProxy{Host: l.Addr().String(), replace: map[string][]byte{}, served: map[string]int{},
		endless: map[string]bool{}, sent: map[string]int64{}, forwarded: map[string]int64{}}
	upstream := "http://" + r.Host
	p.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if d, ok := BlobDigestFromPath(req.URL.Path); ok {
			p.mu.Lock()
			body, tampered := p.replace[d]
			if tampered {
				p.served[d]++
			}
			endless := p.endless[d]
			p.mu.Unlock()
			if endless && req.Method == http.MethodGet {
				p.serveEndless(w, req, upstream, d)
				return
			}
			if tampered {
				w.Header().Set("Docker-Content-Digest", d)
				w.Header().Set("Content-Type", "application/octet-stream")
				http.ServeContent(w, req, "", time.Time{}, bytes.NewReader(body))
				return
			}
		}
		p.forward(w, req, upstream)
	})}
	go func() {
		if err := p.srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
			r.env.TB.Logf("tamper proxy stopped: %v", err)
		}
	}()
	r.env.TB.Cleanup(func() { p.srv.Close() })
	r.env.TB.Logf("tamper proxy for %s on %s", r.Host, p.Host)
	return p, nil
}

// Replace makes the proxy serve body for blob digest d.
func (p *TamperProxy) Replace(d string, body []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.replace[d] = body
}

// Restore makes the proxy pass blob d through from the registry again.
func (p *TamperProxy) Restore(d string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.replace, d)
}

// Served reports how many times the tampered blob d was served.
func (p *TamperProxy) Served(d string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.served[d]
}

// AppendEndless makes the proxy follow blob d with gzip members that never
// end (on = false stops it), like a hostile registry feeding a gzip bomb.
func (p *TamperProxy) AppendEndless(d string, on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.endless[d] = on
}

// Sent reports how many bytes of blob d's endless responses the proxy
// managed to write to its clients.
func (p *TamperProxy) Sent(d string) int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sent[d]
}

func (p *TamperProxy) serveEndless(w http.ResponseWriter, req *http.Request, upstream, d string) {
	out, err := http.NewRequestWithContext(req.Context(), http.MethodGet, upstream+req.URL.RequestURI(), nil)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	out.Header = req.Header.Clone()
	out.Header.Del("Range")
	resp, err := http.DefaultTransport.RoundTrip(out)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	blob, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		http.Error(w, fmt.Sprintf("upstream: %d %v", resp.StatusCode, err), http.StatusBadGateway)
		return
	}
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(make([]byte, 1<<20)); err != nil {
		panic(err) // writing to memory cannot fail
	}
	if err := zw.Close(); err != nil {
		panic(err)
	}
	member := buf.Bytes()
	w.Header().Set("Docker-Content-Digest", d)
	w.Header().Set("Content-Type", "application/octet-stream")
	w.WriteHeader(http.StatusOK)
	for chunk := blob; ; chunk = member {
		n, err := w.Write(chunk)
		p.mu.Lock()
		p.sent[d] += int64(n)
		p.mu.Unlock()
		if err != nil {
			return
		}
	}
}

func (p *TamperProxy) forward(w http.ResponseWriter, req *http.Request, upstream string) {
	out, err := http.NewRequestWithContext(req.Context(), req.Method, upstream+req.URL.RequestURI(), req.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	out.Header = req.Header.Clone()
	out.ContentLength = req.ContentLength
	resp, err := http.DefaultTransport.RoundTrip(out)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	n, _ := io.Copy(w, resp.Body)
	if d, ok := BlobDigestFromPath(req.URL.Path); ok && req.Method == http.MethodGet {
		p.mu.Lock()
		p.forwarded[d] += n
		p.mu.Unlock()
	}
}

// Forwarded reports how many body bytes of blob d the proxy passed
// through from the registry (replaced and endless responses excluded).
func (p *TamperProxy) Forwarded(d string) int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.forwarded[d]
}

// BlobDigestFromPath extracts the digest of /v2/<name>/blobs/<digest>
// (as given: check it before using it in a file name).
func BlobDigestFromPath(p string) (string, bool) {
	i := strings.LastIndex(p, "/blobs/")
	if !strings.HasPrefix(p, "/v2/") || i < 0 {
		return "", false
	}
	d := p[i+len("/blobs/"):]
	if !strings.HasPrefix(d, "sha256:") {
		return "", false
	}
	return d, true
}

// runTool runs a harness tool (crane, ctr...) and returns its stdout; the
// error carries stderr.
func runTool(ctx context.Context, e *Env, path string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, path, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	if err != nil {
		// The reason is on stderr; stdout (ctr's progress bars) only helps
		// when stderr is empty.
		detail := strings.TrimSpace(stderr.String())
		if detail == "" {
			detail = tailLines(stdout.String(), 20)
		}
		return stdout.String(), fmt.Errorf("%s %s: %w: %s", filepath.Base(path), strings.Join(args, " "), err, detail)
	}
	return stdout.String(), nil
}
