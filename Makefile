# cairn: every target delegates to the Rust runner in xtask/ (cargo xtask).
# The runner checks and installs what is missing (rustup target, QEMU).

CONFIG  ?= appliances/default.toml
MACHINE ?= microvm
DURATION ?=
NAME    ?=

CARGO := $(shell command -v cargo 2>/dev/null)
XTASK  = cargo xtask

ARGS    ?=
SEED    ?= 1
KILLS   ?= 50
SERVERS ?=
INTERVAL_MS ?=

.PHONY: run test scenario bench setup clean check-cargo hvctl fault-campaign

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

# A seeded fault campaign (issue #6): memhog and two spinners while the core
# kills the scheduler and the pager KILLS times; prints the report and fails
# unless no page was lost. SERVERS=scheduler,pager and INTERVAL_MS=100 are
# optional.
fault-campaign: check-cargo
	$(XTASK) campaign --seed $(SEED) --kills $(KILLS) $(if $(SERVERS),--servers $(SERVERS)) $(if $(INTERVAL_MS),--interval-ms $(INTERVAL_MS))

# Talk to a running appliance: make hvctl ARGS="sched-credit -d heavy -w 512"
hvctl: check-cargo
	cargo run --quiet -p hvctl -- $(ARGS)

clean:
	cargo clean
