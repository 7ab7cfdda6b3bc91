# edge-agent — build, test, benchmark, demo.
# The TensorFlow Lite C library comes from scripts/install-tflite.sh (into .deps/) unless a
# system install (/usr/local, /usr) or TFLITE_PREFIX provides it; cgo gets its flags and an
# rpath from here, so `make build` just works.

GO       ?= go
BIN      := bin
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X github.com/edge-agent/edge-agent/agent.Version=$(VERSION)

# Resolved once, on first use (so `make clean` installs nothing).
TFLITE_PREFIX = $(eval TFLITE_PREFIX := $(shell scripts/tflite-prefix.sh))$(TFLITE_PREFIX)
CGO_ENV = CGO_ENABLED=1 CGO_CFLAGS="-I$(TFLITE_PREFIX)/include" \
	CGO_LDFLAGS="-L$(TFLITE_PREFIX)/lib -Wl,-rpath,$(TFLITE_PREFIX)/lib"

.PHONY: all build test test-go test-loaded bench demo lint clean deps tflite cross

all: build

tflite:
	@scripts/install-tflite.sh

build:
	@mkdir -p $(BIN)
	$(CGO_ENV) $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/edge-agent ./cmd/edge-agent
	$(CGO_ENV) $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/edgectl ./cmd/edgectl

deps:
	@scripts/deps.sh

# dist/linux-{arm64,amd64}/{edge-agent,edgectl,lib/libtensorflowlite_c.so}: arm64 with Debian's
# aarch64 cross compiler (scripts/deps.sh installs it) and the npm package's arm64 library.
# See cross/README.md, also for 32-bit ARM.
cross:
	GO='$(GO)' GO_LDFLAGS='$(LDFLAGS)' cross/build.sh -o dist arm64 amd64

# dist/edge-agent_<version>_{amd64,arm64}.deb from those layouts, with nfpm (packaging/README.md).
.PHONY: deb
deb: cross
	$(GO) run ./packaging/mkdeb --version '$(VERSION)' --arch amd64,arm64 --dist dist

# gofmt, go vet (cgo, the GPU tag, and without cgo), and no committed build output
# (scripts/check-tracked.sh: no executable or file over 1 MiB tracked outside testdata/).
lint:
	@scripts/check-tracked.sh
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(CGO_ENV) $(GO) vet ./...
	$(CGO_ENV) $(GO) vet -tags tflite_gpu ./agent/infer/tflite
	CGO_ENABLED=0 $(GO) build ./...
	CGO_ENABLED=0 $(GO) vet ./...

# Everything CI runs: install what the tests need, lint, then every test with the race
# detector (real TFLite library, real Mosquitto, real files).
test: deps lint
	$(CGO_ENV) $(GO) test -race -count=1 -timeout 20m ./...
	$(CGO_ENV) $(GO) test -race -count=1 -tags tflite_gpu -run 'Delegate' ./agent/infer/tflite
	# Allocation counts are only meaningful without the race detector (it makes sync.Pool drop items).
	$(CGO_ENV) $(GO) test -count=1 -run 'TestApplyReusesDst' ./agent/preprocess

# make test three times with both cores kept busy by two bounded CPU loops (docs/testing.md).
test-loaded:
	@scripts/loaded-test.sh

bench: deps build
	@scripts/bench.sh

demo: tflite build
	@scripts/demo.sh

clean:
	rm -rf $(BIN) dist .bench .demo .loaded
