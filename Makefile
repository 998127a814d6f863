# `make demo` and `make test` set everything up on a fresh machine, then run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SYSTEM_PACKAGES := gcc libgmp-dev bubblewrap nftables iproute2

.PHONY: setup sandbox demo test check pytest system-deps clean

setup: $(STAMP) sandbox

$(STAMP): pyproject.toml Makefile
	@$(MAKE) --no-print-directory system-deps
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[runtime,dev]'
	@touch $@

# job isolation (tier A): job users and the job runtime under /opt; root only.
sandbox: $(STAMP)
	@if [ "$$(id -u)" = 0 ]; then \
	  $(BIN)/offload sandbox setup; \
	else \
	  echo "not root: skipping job users and runtime; providers will refuse remote jobs"; \
	  echo "(run 'sudo make sandbox' for tier A, or 'offload provide --unsafe-no-sandbox')"; \
	fi

# apt packages that libp2p's build and the sandbox need; installed when root, otherwise named.
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

# as root a skipped sandbox test is a failure: tier A must be proved, not assumed
pytest: setup
	OFFLOAD_REQUIRE_SANDBOX=$$([ "$$(id -u)" = 0 ] && echo 1 || echo 0) $(BIN)/python -m pytest

test: check pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis offload-out
