# berth — build, run, test. `make help` lists the targets.
SHELL := /bin/bash
CARGO ?= cargo
PROFILE ?= debug
BIN := target/$(PROFILE)
RUN_ROOT ?= /tmp/berth-dev
RUN_SOCK ?= $(RUN_ROOT)/berth.sock
APT_PKGS := libseccomp-dev pkg-config busybox-static nftables iproute2 iperf3 tini procps ca-certificates conntrack lxcfs docker-registry apache2-utils openssl

.PHONY: help deps build run test unit integration lint bench bench-upgrade install clean

help: ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

deps: ## install the system packages the build and the tests need (apt-get, as root)
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@command -v cargo >/dev/null || { echo "cargo is required (rustup)"; exit 1; }

build: deps ## build berthd and berth-shim
	$(CARGO) build --workspace $(if $(filter release,$(PROFILE)),--release,)

run: build ## build and run berthd on $(RUN_SOCK) with its data under $(RUN_ROOT)
	@mkdir -p $(RUN_ROOT)
	@echo "export DOCKER_HOST=unix://$(RUN_SOCK)"
	exec $(BIN)/berthd -H unix://$(RUN_SOCK) --data-root $(RUN_ROOT)/data --exec-root $(RUN_ROOT)/exec

test: deps ## unit tests, then the root integration tests (real kernel, real docker CLI)
	$(CARGO) build --workspace
	$(CARGO) test --workspace --all-features -- --test-threads=4

lint: ## rustfmt and clippy, warnings are errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench: deps ## berthd against dockerd, side by side (installs docker.io); BENCH=startup|upgrade|egress|net|memory|images for one part
	$(CARGO) build --release --workspace
	bash bench/run.sh

bench-upgrade: deps ## only the live-upgrade bench: 20 upgrades under load vs dockerd --live-restore
	$(CARGO) build --release --workspace
	BENCH=upgrade bash bench/run.sh

install: ## install binaries and systemd units under $(DESTDIR)
	install -D -m 0755 target/release/berthd $(DESTDIR)/usr/bin/berthd
	install -D -m 0755 target/release/berth-shim $(DESTDIR)/usr/bin/berth-shim
	install -D -m 0644 packaging/berth.service $(DESTDIR)/lib/systemd/system/berth.service
	install -D -m 0644 packaging/berth.socket $(DESTDIR)/lib/systemd/system/berth.socket

clean: ## remove build output
	$(CARGO) clean
