# cocoon: see README.md. Everything CI checks is `make test`.
SHELL := /bin/bash
GO ?= go
GOTAGS := containers_image_openpgp
BIN := $(CURDIR)/bin
E2EBIN := $(BIN)/e2e
export GOFLAGS := -tags=$(GOTAGS)
export COCOON_BIN := $(BIN)
export COCOON_E2E_BIN := $(E2EBIN)

BINARIES := cocoond cocoonctl cocoon-kbs nydus-overlayfs-cocoon

.PHONY: all build test unit vet lint protos protos-check test-deps e2e-tools e2e demo bench fuzz clean

all: build

build:
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/ $(addprefix ./cmd/,$(BINARIES))

vet:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) vet ./...
	cd e2e && GOFLAGS= $(GO) vet ./...

# golangci-lint (version pinned in the script, built into bin/tools/) on
# both modules; configuration in .golangci.yml.
lint:
	./scripts/lint.sh

# Go code for the CDH and AA ttRPC APIs (protos/ -> kata/api/, and the e2e
# module's client stubs -> e2e/internal/kataapi/, committed); buf and the
# protoc plugins are pinned in the script, built into bin/tools/.
protos:
	./scripts/protos.sh

# Fails when the committed generated code differs from what protos/ generates.
protos-check: protos
	@stale=$$(git status --porcelain -- kata/api e2e/internal/kataapi); \
	  if [ -n "$$stale" ]; then echo "generated code is stale (run make protos and commit):"; echo "$$stale"; exit 1; fi

test-deps:
	./scripts/test-deps.sh

unit: test-deps
	$(GO) test -count=1 -timeout 20m ./...

# Everything CI checks: formatting, vet, lint, unit + root tests
# (snapshotter conformance suite included), and the end-to-end suite against
# real containerd, runc and a registry on loopback.
test: vet lint build unit e2e

e2e-tools:
	./scripts/e2e-tools.sh

e2e: build e2e-tools
	cd e2e && GOFLAGS= $(GO) test -count=1 -v -timeout 40m ./...

demo: build e2e-tools
	cd e2e && GOFLAGS= $(GO) run ./cmd/demo

bench: build e2e-tools test-deps
	@mkdir -p $(BIN)
	set -o pipefail; $(GO) test -run '^$$' -bench . ./... | tee $(BIN)/bench-unit.txt
	cd e2e && GOFLAGS= $(GO) run ./cmd/bench
	cd e2e && GOFLAGS= $(GO) run ./cmd/restbench
	cd e2e && GOFLAGS= $(GO) run ./cmd/lazybench

FUZZTIME ?= 20s
fuzz:
	./scripts/fuzz.sh $(FUZZTIME)

clean:
	rm -rf $(BIN)
