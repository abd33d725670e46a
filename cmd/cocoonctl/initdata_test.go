package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cocoon-cc/cocoon/attest/initdata"
)

const initdataVectorDir = "testdata"

func initdataVector(t *testing.T) (annotation, digestHex, tdxHex string, doc []byte, path string) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(initdataVectorDir, "initdata-vector.json"))
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Annotation string `json:"annotation_value"`
		File       string `json:"decoded_toml_file"`
		Digest     string `json:"digest_hex"`
		TDX        string `json:"tdx_mrconfigid_48_hex"`
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	path = filepath.Join(initdataVectorDir, v.File)
	if doc, err = os.ReadFile(path); err != nil {
		t.Fatal(err)
	}
	return v.Annotation, v.Digest, v.TDX, doc, path
}

func TestInitdataDigestCommand(t *testing.T) {
	annotation, digest, tdx, doc, path := initdataVector(t)
	img, err := initdata.EncodeDevice(doc)
	if err != nil {
		t.Fatal(err)
	}
	imgPath := filepath.Join(t.TempDir(), "initdata.img")
	if err := os.WriteFile(imgPath, img, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		args    []string
		want    string
		wantErr error
	}{
		{"file", []string{path}, digest, nil},
		{"annotation", []string{"--annotation", annotation}, digest, nil},
		{"device", []string{"--device", imgPath}, digest, nil},
		{"tdx", []string{"--tee", "tdx", "--annotation", annotation}, tdx, nil},
		{"snp", []string{"--tee", "snp", path}, digest, nil},
		{"tpm", []string{"--tee", "tpm", path}, "5969a150dc60c85c0cd9744e296cfc81a3e622413c0359f199099b7a3bcef135", nil},
		{"no source", nil, "", errUsage},
		{"two sources", []string{"--annotation", annotation, path}, "", errUsage},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			err := runInitdataDigest(context.Background(), tc.args, &out)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if out.String() != tc.want+"\n" {
				t.Fatalf("output %q, want %q", out.String(), tc.want)
			}
		})
	}
	if err := runInitdataDigest(context.Background(), []string{"--tee", "sample", path}, &bytes.Buffer{}); !errors.Is(err, initdata.ErrUnsupportedTEE) {
		t.Errorf("sample TEE: err = %v", err)
	}
	if err := runInitdataDigest(context.Background(), []string{"--annotation", "bm90IGd6aXA="}, &bytes.Buffer{}); err == nil {
		t.Error("non-gzip annotation accepted")
	}
}

func TestInitdataEncodeDecodeCommands(t *testing.T) {
	annotation, _, _, doc, path := initdataVector(t)
	var out bytes.Buffer
	if err := runInitdataDecode(context.Background(), []string{annotation}, &out); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), doc) {
		t.Fatal("decode did not print the exact document")
	}
	out.Reset()
	if err := runInitdataEncode(context.Background(), []string{path}, &out); err != nil {
		t.Fatal(err)
	}
	value := strings.TrimSuffix(out.String(), "\n")
	back, err := initdata.DecodeAnnotation(value)
	if err != nil || !bytes.Equal(back, doc) {
		t.Fatalf("encode output does not decode to the file: %v", err)
	}

	bad := filepath.Join(t.TempDir(), "bad.toml")
	if err := os.WriteFile(bad, []byte("version = \"9\"\nalgorithm = \"sha256\"\n[data]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := runInitdataEncode(context.Background(), []string{bad}, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "unsupported version") {
		t.Errorf("invalid document encoded: %v", err)
	}
	for _, args := range [][]string{nil, {"a", "b"}} {
		if err := runInitdataEncode(context.Background(), args, &bytes.Buffer{}); !errors.Is(err, errUsage) {
			t.Errorf("encode %q: %v", args, err)
		}
		if err := runInitdataDecode(context.Background(), args, &bytes.Buffer{}); !errors.Is(err, errUsage) {
			t.Errorf("decode %q: %v", args, err)
		}
	}
}
