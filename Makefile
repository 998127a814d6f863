# `make demo` and `make test` set everything up on a fresh machine, then run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SYSTEM_PACKAGES := gcc libgmp-dev

.PHONY: setup demo test check pytest system-deps clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@$(MAKE) --no-print-directory system-deps
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[runtime,dev]'
	@touch $@

# apt packages that libp2p's build needs; installed when root, otherwise named.
system-deps:
	@missing=""; \
	if command -v dpkg >/dev/null 2>&1; then \
	  for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	else \
	  command -v gcc >/dev/null 2>&1 || missing=" gcc"; \
	fi; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing system packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else \
	    echo "offload needs system packages:$$missing"; \
	    echo "install them, e.g.: sudo apt-get install$$missing   (then run make again)"; \
	    exit 1; \
	  fi; \
	fi

demo: setup
	$(BIN)/offload demo

check: setup
	$(BIN)/ruff check node protocol scheduler ledger tests bench examples
	$(BIN)/mypy

pytest: setup
	$(BIN)/python -m pytest

test: check pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis offload-out
