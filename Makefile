# Conveniences; the README's commands need nothing but Go.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null)

.PHONY: build image deb test check
build: ## one static binary, ./fqdngate
	CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=$(VERSION) -X main.revision=$(REVISION)" -o fqdngate ./cmd/fqdngate

image: ## the container image of deploy/kubernetes, stamped as build stamps the binary
	docker build -f deploy/kubernetes/Dockerfile --build-arg VERSION=$(VERSION) --build-arg REVISION=$(REVISION) -t fqdngate:$(VERSION) -t fqdngate:latest .

deb: build ## the Debian package of that binary, in dist/ (tools/deb, a module of its own for nfpm)
	cd tools/deb && go run . -binary ../../fqdngate -repo ../.. -version $(VERSION) -out ../../dist

test: ## the whole suite, as in the README and CI
	go test -race -count=1 ./...

check: ## what CI checks before the tests
	test -z "$$(gofmt -l $$(git ls-files '*.go'))"
	go vet ./...
	staticcheck ./...
