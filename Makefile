# flownexus — build, run, test.
#
#   make run    run the server on embedded defaults (./data, UDP 5683)
#   make test   install the test peers if missing, then run every test
#   make bench  release benchmarks (see docs/benchmarks.md)
#   make docs   the documentation as static HTML in target/docs (mdBook)
#   make fuzz   every fuzz target for FUZZ_SECONDS (300) each (nightly, cargo-fuzz)

SHELL := /bin/bash
CARGO ?= cargo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Debian packages the tests use as real peers: libcoap's coap-client and
# coap-server (CoAP interop, baseline benchmark), curl and openssl (firmware
# server), shellcheck (deploy scripts), Chromium (the dashboard in a browser),
# systemd (systemd-analyze verify of deploy/flownexus.service), prometheus
# (promtool check metrics on a real scrape), nginx with its stream module (the
# SNI pass-through in front of the firmware server, nginx/), sqlite3 (the
# deploy script checks its backups with it), nftables, sudo (visudo) and
# iproute2 (setup-host.sh's firewall and sudoers file, checked for real),
# jq (the API reference's curl examples are run as written), redis-server
# (the Celery broker the event tests run against),
# and what ../shared/peers/build-wakaama.sh needs to build Eclipse Wakaama's
# LwM2M client, the real client the operation tests run against.
DEB_TEST_PACKAGES := libcoap3-bin shellcheck curl openssl chromium systemd prometheus \
	nginx libnginx-mod-stream sqlite3 nftables sudo iproute2 git jq redis-server \
	build-essential cmake autoconf automake libtool pkg-config

# Playwright (npm, drives Debian's Chromium), schemathesis (PyPI, fuzzes the
# REST API) and Celery with its Redis transport (PyPI: the Python workers
# flownexus's events reach), pinned by their lock files.
BROWSER_DEPS := tests/browser/node_modules/.package-lock.json
PYTHON_DEPS := .venv/.installed

# How many random cases each property test runs inside `make test`.
export PROPTEST_CASES ?= 512

.PHONY: run test deps debs lint fmt bench build docs fuzz

run:
	$(CARGO) run --release -- serve

build:
	$(CARGO) build --locked

# Install what is missing; `apt-get update` first, as on a fresh machine.
deps: debs $(BROWSER_DEPS) $(PYTHON_DEPS)
	@true

$(BROWSER_DEPS): tests/browser/package-lock.json
	cd tests/browser && npm ci --no-audit --no-fund

$(PYTHON_DEPS): tests/requirements.txt
	python3 -m venv .venv
	.venv/bin/pip install --quiet --disable-pip-version-check -r tests/requirements.txt
	touch $@

debs:
	@missing=""; for p in $(DEB_TEST_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

lint:
	shellcheck deploy/*.sh fuzz/*.sh .ci/run
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

test: deps lint
	$(CARGO) test --locked

fmt:
	$(CARGO) fmt --all

bench: deps
	$(CARGO) build --release --locked
	./target/release/flownexus bench all

# mdBook from crates.io, pinned, installed into target/tools on first use.
MDBOOK := target/tools/bin/mdbook
$(MDBOOK):
	$(CARGO) install mdbook --version 0.5.4 --locked --root target/tools

docs: $(MDBOOK)
	$(MDBOOK) build docs --dest-dir $(CURDIR)/target/docs

# Coverage-guided fuzzing of every parser of outside bytes (fuzz/README.md);
# `make test` replays the stored corpora on stable.
fuzz:
	bash fuzz/run.sh
