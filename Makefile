# Baton build. `make demo` and `make test` are the two entry points; both install and build first.
SHELL := /bin/bash
BUILD := build
ARCH_INC := /usr/include/$(shell uname -m)-linux-gnu
BPF_CFLAGS := -O2 -g -Wall -Werror -target bpf -I$(ARCH_INC) -Ibpf
NATIVE_CFLAGS := -O2 -g -Wall -Wextra -Werror -fPIC -std=gnu11

BPF_SRC := $(wildcard bpf/*.c)
BPF_OBJ := $(patsubst bpf/%.c,$(BUILD)/bpf/%.o,$(BPF_SRC))
NATIVE_SRC := $(wildcard native/*.c)
NATIVE_LIB := $(BUILD)/native/libbaton.so
TS_SRC := $(shell find controller native examples bench -name '*.ts' 2>/dev/null)

.PHONY: all deps build bpf native ts test soak vagrant-validate demo lab-up lab-down clean

all: build

deps: $(BUILD)/.deps
$(BUILD)/.deps: scripts/deps.sh scripts/commands.txt package.json package-lock.json
	@mkdir -p $(BUILD)
	scripts/deps.sh
	@touch $@

build: deps bpf native ts

bpf: $(BPF_OBJ)
$(BUILD)/bpf/%.o: bpf/%.c $(wildcard bpf/*.h)
	@mkdir -p $(dir $@)
	clang $(BPF_CFLAGS) -c $< -o $@

native: $(NATIVE_LIB)
$(NATIVE_LIB): $(NATIVE_SRC) $(wildcard native/*.h)
	@mkdir -p $(dir $@)
	gcc $(NATIVE_CFLAGS) -shared -o $@ $(NATIVE_SRC)

ts: $(BUILD)/.ts
$(BUILD)/.ts: $(TS_SRC) tsconfig.json $(BUILD)/.deps
	npx tsc -p tsconfig.json
	@touch $@

test: build vagrant-validate
	npx tsc -p tsconfig.test.json
	npx vitest run

# The full load test: 10,000 transferred connections held 60 s (test/soak/load.test.ts; `make test`
# runs it with 1,000 for 10 s). Bounded: it stops by itself.
soak: build
	BATON_SOAK_CONNECTIONS=10000 BATON_SOAK_SECONDS=60 npx vitest run test/soak

# Parses vagrant/Vagrantfile (and the cluster.yaml it reads) without creating a VM.
# --ignore-provider: neither VirtualBox nor vagrant-libvirt is needed for that; no checkpoint:
# vagrant would otherwise ask hashicorp.com for a newer version.
vagrant-validate: deps
	cd vagrant && VAGRANT_CHECKPOINT_DISABLE=1 vagrant validate --ignore-provider

# The Debian package (scripts/package/deb.sh): how an operator installs Baton, and how the Vagrant
# box gets it. Rebuilt only when what it holds changed.
VERSION := $(shell sed -n 's/^  "version": "\(.*\)",$$/\1/p' package.json)
DEB := $(BUILD)/deb/baton_$(VERSION)_amd64.deb
DEB_INPUTS := $(BUILD)/.ts $(BPF_OBJ) $(NATIVE_LIB) $(BUILD)/.deps scripts/package/deb.sh scripts/commands.txt \
	$(wildcard deploy/systemd/*) $(wildcard scripts/provision/*) scripts/certs.sh $(wildcard docs/*.md) README.md $(wildcard examples/clients/*)
.PHONY: deb vagrant-deps vagrant-box
deb: build $(DEB)
$(DEB): $(DEB_INPUTS)
	scripts/package/deb.sh $(@D)

# The Vagrant VMs' host side (QEMU, libvirt, the offline box build: the set vm of scripts/commands.txt).
vagrant-deps:
	BATON_DEPS=vm scripts/deps.sh

# The box the VMs boot (scripts/vagrant/box.sh), added to Vagrant as baton-local: rebuilt, and
# added again, only when the package or the script changed.
BOX := $(BUILD)/vagrant/baton-local.box
vagrant-box: vagrant-deps deb $(BUILD)/vagrant/.box-added
$(BOX): $(DEB) scripts/vagrant/box.sh scripts/vagrant/initramfs-no-nic-drivers
	scripts/vagrant/box.sh $(DEB) $@
$(BUILD)/vagrant/.box-added: $(BOX)
	VAGRANT_CHECKPOINT_DISABLE=1 vagrant box add --force --name baton-local $(BOX)
	@touch $@

# The end-to-end suite across the VMs (scripts/vagrant/test.sh): the host's libvirt started as
# needed, the client and three nodes from the local box, `N passed, N failed`, and everything torn
# down again. Bounded (20 minutes); not part of `make test`. Then the kernel-TLS suite.
.PHONY: vagrant-test vagrant-ktls
vagrant-test: vagrant-box
	scripts/vagrant/test.sh
	$(MAKE) vagrant-ktls

# The tests that need kernel TLS (test/ktls/: TLS handoffs in the namespace lab with curl and
# openssl s_client, native/ktls on real sockets), in one Debian 12 VM booted from the box with this
# tree shared (scripts/vagrant/vm-run.sh): this machine's kernel has no kernel TLS. The lab's
# processes start slowly under QEMU's emulation: the lab waits up to 7 minutes. Bounded (25 minutes).
vagrant-ktls: build vagrant-box
	scripts/vagrant/vm-run.sh 'BATON_LAB_READY_MS=420000 node node_modules/vitest/vitest.mjs run --config test/ktls/vitest.config.ts'

demo: build
	node dist/controller/bin/batonctl.js demo

lab-up: build
	node dist/controller/bin/batonctl.js lab up

lab-down: build
	node dist/controller/bin/batonctl.js lab down

clean:
	rm -rf $(BUILD) dist

# The benchmark suite (bench/, BENCHMARKS.md): its own lab, bounded (under 10 minutes on 2 cores),
# writes bench/results.json and regenerates BENCHMARKS.md and bench/charts/. HAProxy is a baseline
# the suite starts, not a dependency of Baton: bench-deps installs it (the set bench of
# scripts/commands.txt), `make deps` does not.
.PHONY: bench bench-deps
bench: build bench-deps $(BUILD)/bench/flood $(BUILD)/bench/ref-handoff
	BATON_LOG_LEVEL=warn node dist/bench/main.js

bench-deps:
	BATON_DEPS=bench scripts/deps.sh

$(BUILD)/bench/flood: bench/flood.c
	@mkdir -p $(dir $@)
	gcc $(NATIVE_CFLAGS) -o $@ $<

# The reference handoff (bench/reference/): Baton's own repair steps (native/repair.c) driven from C.
$(BUILD)/bench/ref-handoff: bench/reference/handoff.c native/repair.c native/repair.h
	@mkdir -p $(dir $@)
	gcc $(NATIVE_CFLAGS) -Inative -o $@ bench/reference/handoff.c native/repair.c -lbpf
