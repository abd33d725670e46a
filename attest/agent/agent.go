// Package agent is cocoon's Attestation Agent service: evidence for caller
// data, KBS and CoCo-AS tokens, and runtime measurements, with upstream
// AA's semantics (guest-components attestation-agent). The REST shim
// (restapi) serves it to workloads.
//
// It must never log tokens, TEE private keys or evidence.
package agent

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/kbs"
)

// EventLog records runtime measurements (attest/eventlog.Log).
type EventLog interface {
	Extend(ctx context.Context, domain, operation, content string, register *int) error
}

// Options configure an Agent.
type Options struct {
	Attester attest.Attester
	// KBS is the [token_configs.kbs] template; nil means "kbs" tokens are
	// not configured. Its Attester is filled in.
	KBS *kbs.Config
	// CoCoASURL is [token_configs.coco_as] url; empty means not configured.
	CoCoASURL string
	// EventLog is nil when eventlog recording is disabled.
	EventLog   EventLog
	HTTPClient *http.Client
}

// Agent is the Attestation Agent service; transports (restapi) call it.
type Agent struct{ o Options }

// MeasurementResult is the outcome of a runtime measurement request, as
// upstream AA distinguishes it (the REST shim maps each to its body).
type MeasurementResult int

const (
	MeasurementOK MeasurementResult = iota
	MeasurementNotSupported
	MeasurementNotEnabled
)

// New returns an Agent.
func New(o Options) (*Agent, error) {
	if o.Attester == nil {
		return nil, errors.New("agent: no attester")
	}
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{Timeout: 60 * time.Second}
	}
	return &Agent{o: o}, nil
}

// TEE is the primary attester's TEE name.
func (a *Agent) TEE() string { return a.o.Attester.TEE() }

// AdditionalTEEs lists additional attesters (devices); cocoon has none yet.
func (a *Agent) AdditionalTEEs() []string { return nil }

// Evidence returns the primary attester's evidence as compact JSON. The
// runtime data is passed through unchanged, as upstream AA does.
func (a *Agent) Evidence(ctx context.Context, runtimeData []byte) ([]byte, error) {
	ev, err := a.o.Attester.Evidence(ctx, runtimeData)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, ev); err != nil {
		return nil, fmt.Errorf("attester returned invalid evidence JSON: %w", err)
	}
	return buf.Bytes(), nil
}

// AdditionalEvidence returns nothing: there are no additional attesters.
func (a *Agent) AdditionalEvidence(context.Context, []byte) ([]byte, error) { return nil, nil }

// Token returns what upstream AA's GetToken returns for tokenType.
func (a *Agent) Token(ctx context.Context, tokenType string) ([]byte, error) {
	switch tokenType {
	case "kbs":
		if a.o.KBS == nil {
			return nil, errors.New("kbs token config not configured in config file")
		}
		// As upstream: every call uses a fresh TEE key pair and handshake.
		cfg := *a.o.KBS
		cfg.Attester = a.o.Attester
		c, err := kbs.NewClient(cfg)
		if err != nil {
			return nil, err
		}
		tok, key, err := c.TokenAndKey(ctx)
		if err != nil {
			return nil, err
		}
		return json.Marshal(struct {
			Token      string `json:"token"`
			TEEKeypair string `json:"tee_keypair"`
		}{tok, string(key)})
	case "coco_as":
		if a.o.CoCoASURL == "" {
			return nil, errors.New("coco_as token config not configured in config file")
		}
		return a.cocoASToken(ctx)
	}
	return nil, errors.New("Invalid resource type") //nolint:staticcheck // upstream's message, which clients match
}

func (a *Agent) cocoASToken(ctx context.Context) ([]byte, error) {
	ev, err := a.Evidence(ctx, nil)
	if err != nil {
		return nil, err
	}
	body, _ := json.Marshal(map[string]any{
		"verification_requests": []map[string]string{{
			"tee":      a.TEE(),
			"evidence": base64.RawURLEncoding.EncodeToString(ev),
		}},
		"policy_ids": []string{},
	})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(a.o.CoCoASURL, "/")+"/attestation", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.o.HTTPClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("coco_as attestation request: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("coco_as attestation response: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("Remote Attestation Failed, AS Response: %s", b) //nolint:staticcheck // upstream's message, which clients match
	}
	return b, nil
}

// ExtendRuntimeMeasurement records an AAEL event and extends the register.
func (a *Agent) ExtendRuntimeMeasurement(ctx context.Context, domain, operation, content string, register *uint64) (MeasurementResult, error) {
	if a.o.EventLog == nil {
		return MeasurementNotEnabled, nil
	}
	if _, ok := a.o.Attester.(attest.RuntimeMeasurer); !ok {
		return MeasurementNotSupported, nil
	}
	var reg *int
	if register != nil {
		if *register > 1<<16 {
			return 0, fmt.Errorf("register index %d out of range", *register)
		}
		r := int(*register)
		reg = &r
	}
	if err := a.o.EventLog.Extend(ctx, domain, operation, content, reg); err != nil {
		if errors.Is(err, attest.ErrNotSupported) {
			return MeasurementNotSupported, nil
		}
		return 0, err
	}
	return MeasurementOK, nil
}
