package tpmtest

import "encoding/base64"

func decodeB64(s string) ([]byte, error) { return base64.StdEncoding.DecodeString(s) }

func encodeB64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
