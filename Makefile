# cairn: every target delegates to the Rust runner in xtask/ (cargo xtask).
# The runner checks and installs what is missing (rustup target, QEMU).

CONFIG  ?= appliances/default.toml
MACHINE ?= microvm
DURATION ?=
NAME    ?=

CARGO := $(shell command -v cargo 2>/dev/null)
XTASK  = cargo xtask

ARGS    ?=

.PHONY: run test scenario bench setup clean check-cargo hvctl

check-cargo:
ifndef CARGO
	@echo "cargo is missing: install Rust with rustup (https://rustup.rs), then re-run make"; exit 1
endif

setup: check-cargo
	$(XTASK) setup

run: check-cargo
	$(XTASK) run --config $(CONFIG) --machine $(MACHINE) $(if $(DURATION),--duration $(DURATION))

test: check-cargo
	$(XTASK) test

scenario: check-cargo
	$(XTASK) scenario $(NAME)

bench: check-cargo
	$(XTASK) bench

# Talk to a running appliance: make hvctl ARGS="sched-credit -d heavy -w 512"
hvctl: check-cargo
	cargo run --quiet -p hvctl -- $(ARGS)

clean:
	cargo clean
