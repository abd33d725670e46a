package encrypt

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// failingLayer claims a digest but its blob breaks off with an error, as a
// source that fails half way through a write.
type failingLayer struct{ v1.Layer }

func (failingLayer) Compressed() (io.ReadCloser, error) {
	return io.NopCloser(io.MultiReader(strings.NewReader("partial"), errReader{})), nil
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("source went away") }

func TestWriteRefLayoutFailure(t *testing.T) {
	ctx := context.Background()
	good, err := random.Image(512, 1)
	if err != nil {
		t.Fatal(err)
	}
	rl, err := random.Layer(512, types.OCILayer)
	if err != nil {
		t.Fatal(err)
	}
	bad, err := mutate.AppendLayers(mutate.MediaType(empty.Image, types.OCIManifestSchema1), failingLayer{rl})
	if err != nil {
		t.Fatal(err)
	}
	parent := t.TempDir()
	dir := filepath.Join(parent, "new")

	// A new layout: nothing at all is left behind.
	if _, err := WriteRef(ctx, "oci:"+dir+":v1", bad, false); err == nil || !strings.Contains(err.Error(), "source went away") {
		t.Fatalf("write of a failing image: %v", err)
	}
	if ents, _ := os.ReadDir(parent); len(ents) != 0 {
		t.Fatalf("left behind in %s: %v", parent, ents)
	}

	// An existing layout keeps the images it named.
	d, err := WriteRef(ctx, "oci:"+dir+":v1", good, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := WriteRef(ctx, "oci:"+dir+":v2", bad, false); err == nil {
		t.Fatal("write of a failing image succeeded")
	}
	img, err := OpenRef(ctx, "oci:"+dir+":v1", false)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := img.Digest(); got != d {
		t.Fatalf("v1 is %s, wrote %s", got, d)
	}
	if _, err := OpenRef(ctx, "oci:"+dir+":v2", false); err == nil {
		t.Fatal("a failed write named an image")
	}
}
