package initdata

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"strings"
	"unicode/utf8"

	"github.com/BurntSushi/toml"
)

// Names and paths fixed by Kata and guest-components.
const (
	// AnnotationKey is the pod annotation carrying the encoded document.
	AnnotationKey = "io.katacontainers.config.hypervisor.cc_init_data"
	// Version is the only document version the Kata agent accepts.
	Version = "0.1.0"

	// Well-known [data] keys.
	KeyAAConfig  = "aa.toml"
	KeyCDHConfig = "cdh.toml"
	KeyPolicy    = "policy.rego"

	// Guest paths the Kata agent writes the document and configs to.
	DirPath       = "/run/confidential-containers/initdata"
	TOMLPath      = DirPath + "/initdata.toml"
	AAConfigPath  = DirPath + "/aa.toml"
	CDHConfigPath = DirPath + "/cdh.toml"

	// DeviceMagic starts the Kata init-data block device.
	DeviceMagic = "initdata"
	// deviceHeaderSize is the magic plus the u64 little-endian length.
	deviceHeaderSize = 16
	// deviceBlockSize is the padding unit of the block device image.
	deviceBlockSize = 512

	// MaxDocumentSize bounds the decompressed document (the Kata agent's
	// policy file limit), so a hostile gzip stream cannot exhaust memory.
	MaxDocumentSize = 16 << 20
)

// Algorithm is an init-data digest algorithm as the document names it.
type Algorithm string

// Supported algorithms. sm3 is recognised only to be refused clearly.
const (
	SHA256 Algorithm = "sha256"
	SHA384 Algorithm = "sha384"
	SHA512 Algorithm = "sha512"
	SM3    Algorithm = "sm3"
)

// New returns a hash for the algorithm.
func (a Algorithm) New() (hash.Hash, error) {
	switch a {
	case SHA256:
		return sha256.New(), nil
	case SHA384:
		return sha512.New384(), nil
	case SHA512:
		return sha512.New(), nil
	case SM3:
		return nil, fmt.Errorf("initdata: algorithm %q is not supported by this build (no SM3 implementation; use sha256, sha384 or sha512)", string(a))
	default:
		return nil, fmt.Errorf("initdata: unsupported algorithm %q (want sha256, sha384 or sha512)", string(a))
	}
}

// Sum returns H(data).
func (a Algorithm) Sum(data []byte) ([]byte, error) {
	h, err := a.New()
	if err != nil {
		return nil, err
	}
	h.Write(data)
	return h.Sum(nil), nil
}

// Document is a parsed init-data document. Raw holds the exact bytes the
// digest covers.
type Document struct {
	Version   string
	Algorithm Algorithm
	Data      map[string]string
	Raw       []byte
}

// Parse parses and validates an init-data TOML document as the Kata agent
// does: version, algorithm and data are required, version must be 0.1.0,
// algorithm one of sha256, sha384, sha512, and every [data] value a string.
func Parse(raw []byte) (*Document, error) {
	if len(raw) > MaxDocumentSize {
		return nil, fmt.Errorf("initdata: document is %d bytes, more than %d", len(raw), MaxDocumentSize)
	}
	if !utf8.Valid(raw) {
		return nil, errors.New("initdata: document is not valid UTF-8")
	}
	var doc struct {
		Version   string            `toml:"version"`
		Algorithm string            `toml:"algorithm"`
		Data      map[string]string `toml:"data"`
	}
	md, err := toml.Decode(string(raw), &doc)
	if err != nil {
		return nil, fmt.Errorf("initdata: parse TOML: %w", err)
	}
	for _, key := range []string{"version", "algorithm", "data"} {
		if !md.IsDefined(key) {
			return nil, fmt.Errorf("initdata: missing field %q", key)
		}
	}
	if doc.Version != Version {
		return nil, fmt.Errorf("initdata: unsupported version %q, expected %q", doc.Version, Version)
	}
	alg := Algorithm(doc.Algorithm)
	if _, err := alg.New(); err != nil {
		return nil, fmt.Errorf("initdata: field \"algorithm\": %w", err)
	}
	if doc.Data == nil {
		doc.Data = map[string]string{}
	}
	return &Document{
		Version:   doc.Version,
		Algorithm: alg,
		Data:      doc.Data,
		Raw:       bytes.Clone(raw),
	}, nil
}

// Digest returns H(Raw) with the document's algorithm.
func (d *Document) Digest() []byte {
	sum, err := d.Algorithm.Sum(d.Raw)
	if err != nil {
		// Parse only admits algorithms that hash.
		panic(err)
	}
	return sum
}

// EncodeAnnotation returns the pod annotation value for a TOML document:
// standard padded base64 of gzip(toml). The document is validated first so
// that a host never ships something the guest refuses.
func EncodeAnnotation(tomlDoc []byte) (string, error) {
	if _, err := Parse(tomlDoc); err != nil {
		return "", err
	}
	gz, err := compress(tomlDoc)
	if err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(gz), nil
}

// DecodeAnnotation returns the exact TOML bytes carried by an annotation
// value (standard padded base64 of gzip). It does not parse them. Several
// concatenated gzip members decode whole, as the Kata Go runtime (Go's
// gzip reader) reads the annotation it measures.
func DecodeAnnotation(value string) ([]byte, error) {
	value = strings.TrimSpace(value)
	if value == "" {
		return nil, errors.New("initdata: annotation value is empty")
	}
	if base64.StdEncoding.DecodedLen(len(value)) > MaxDocumentSize {
		return nil, fmt.Errorf("initdata: annotation value is %d bytes, too large", len(value))
	}
	gz, err := base64.StdEncoding.DecodeString(value)
	if err != nil {
		return nil, fmt.Errorf("initdata: annotation is not standard base64: %w", err)
	}
	return decompress(gz, true)
}

// EncodeDevice returns the Kata init-data block device image for a TOML
// document: magic, u64 LE length, gzip, zero padding to 512 bytes.
func EncodeDevice(tomlDoc []byte) ([]byte, error) {
	if _, err := Parse(tomlDoc); err != nil {
		return nil, err
	}
	gz, err := compress(tomlDoc)
	if err != nil {
		return nil, err
	}
	n := deviceHeaderSize + len(gz)
	if rem := n % deviceBlockSize; rem != 0 {
		n += deviceBlockSize - rem
	}
	img := make([]byte, deviceHeaderSize, n)
	copy(img, DeviceMagic)
	binary.LittleEndian.PutUint64(img[len(DeviceMagic):], uint64(len(gz)))
	img = append(img, gz...)
	return img[:n], nil
}

// DecodeDevice reads a Kata init-data block device (or its image) and
// returns the exact TOML bytes. It does not parse them.
func DecodeDevice(r io.Reader) ([]byte, error) {
	var hdr [deviceHeaderSize]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, fmt.Errorf("initdata: read device header: %w", err)
	}
	if string(hdr[:len(DeviceMagic)]) != DeviceMagic {
		return nil, fmt.Errorf("initdata: device magic is %q, want %q", hdr[:len(DeviceMagic)], DeviceMagic)
	}
	n := binary.LittleEndian.Uint64(hdr[len(DeviceMagic):])
	if n > MaxDocumentSize {
		return nil, fmt.Errorf("initdata: device payload length %d exceeds %d", n, MaxDocumentSize)
	}
	gz := make([]byte, n)
	if _, err := io.ReadFull(r, gz); err != nil {
		return nil, fmt.Errorf("initdata: read device payload (%d bytes): %w", n, err)
	}
	return decompress(gz, false)
}

// ReadDevice opens path (a block device or image file) and decodes it.
func ReadDevice(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("initdata: %w", err)
	}
	defer f.Close()
	doc, err := DecodeDevice(f)
	if err != nil {
		return nil, fmt.Errorf("%w (device %s)", err, path)
	}
	return doc, nil
}

func compress(b []byte) ([]byte, error) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(b); err != nil {
		return nil, fmt.Errorf("initdata: gzip: %w", err)
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("initdata: gzip: %w", err)
	}
	return buf.Bytes(), nil
}

// decompress gunzips every gzip member when multistream (annotations, as
// the Kata Go runtime reads them) or only the first (the device, as the
// Rust agent's single-member decoder reads it), refusing output beyond
// MaxDocumentSize in total.
func decompress(gz []byte, multistream bool) ([]byte, error) {
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		return nil, fmt.Errorf("initdata: gunzip: %w", err)
	}
	zr.Multistream(multistream)
	out, err := io.ReadAll(io.LimitReader(zr, MaxDocumentSize+1))
	if err != nil {
		return nil, fmt.Errorf("initdata: gunzip: %w", err)
	}
	if len(out) > MaxDocumentSize {
		return nil, fmt.Errorf("initdata: decompressed document exceeds %d bytes", MaxDocumentSize)
	}
	return out, nil
}
