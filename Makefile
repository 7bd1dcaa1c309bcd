# hotreload: build the module for Lua 5.4, 5.5, 5.3 and LuaJIT, test it, lint it.
# `make test` is the one command that runs everything (CI runs it too).

CARGO  ?= cargo
LUA54  ?= lua5.4
LUAJIT ?= luajit
LUA53  ?= lua5.3
BUSTED ?= /usr/bin/busted
# every spec but the servers one (make test-servers: it needs nginx and HAProxy)
SPECS  ?= $(sort $(filter-out spec/servers_spec.lua,$(wildcard spec/*_spec.lua)))
# the walk's specs again with the portable reads (lua_next and API slot reads)
WALK_SPECS = spec/replace_spec.lua spec/lifecycle_spec.lua spec/fuzz_spec.lua

# the flavours `make test` tests with Debian's interpreters; Lua 5.5 (no Debian package) is
# built too, and tested on the matrix's stock 5.5 host
FLAVOURS = lua54 luajit lua53
MODULES  = $(FLAVOURS:%=build/%/hotreload.so)

.PHONY: all deps build bench profile demo demo-luajit fuzz stress test test-rust test-lua54 test-luajit test-lua53 check-specs lint msrv test-servers matrix matrix-valgrind clean FORCE

all: build

deps:
	@sh .ci/deps

build: $(MODULES) build/lua55/hotreload.so

# One target dir per flavour: the module feature set differs, and each stays cached.
build/%/hotreload.so: FORCE
	$(CARGO) build --release --locked --no-default-features --features $*,module --target-dir target/$*
	@mkdir -p $(@D)
	cp target/$*/release/libhotreload.so $@

test: deps build test-rust check-specs test-lua53 test-lua54 test-luajit

# The unit tests on the vendored Lua 5.4 (both ways), on a vendored LuaJIT (the in-place
# readers' probes and cursors against its API) and on a vendored Lua 5.3 (the C API only).
test-rust:
	$(CARGO) test --locked
	HOTRELOAD_PORTABLE_WALK=1 $(CARGO) test --locked
	$(CARGO) test --locked --no-default-features --features luajit,vendored --target-dir target/luajit-test
	$(CARGO) test --locked --no-default-features --features lua53,vendored --target-dir target/lua53-test

test-lua54: build/lua54/hotreload.so
	prove --exec '$(LUA54) $(BUSTED) --cpath=build/lua54/?.so -o TAP' $(SPECS)
	HOTRELOAD_PORTABLE_WALK=1 prove --exec '$(LUA54) $(BUSTED) --cpath=build/lua54/?.so -o TAP' $(WALK_SPECS)

test-lua53: build/lua53/hotreload.so
	prove --exec '$(LUA53) $(BUSTED) --cpath=build/lua53/?.so -o TAP' $(SPECS)

test-luajit: build/luajit/hotreload.so
	prove --exec '$(LUAJIT) $(BUSTED) --cpath=build/luajit/?.so -o TAP' $(SPECS)
	HOTRELOAD_PORTABLE_WALK=1 prove --exec '$(LUAJIT) $(BUSTED) --cpath=build/luajit/?.so -o TAP' $(WALK_SPECS)

# nginx (lua-nginx-module) and HAProxy under load while the app is saved (needs
# nginx-light libnginx-mod-http-lua haproxy apache2-utils curl, see .ci/run), and the
# LuaJIT specs again, on the LuaJIT those packages bring (OpenResty's luajit2).
test-servers: build/luajit/hotreload.so build/lua53/hotreload.so
	prove --exec '$(LUAJIT) $(BUSTED) -o TAP' spec/servers_spec.lua
	prove --exec '$(LUAJIT) $(BUSTED) --cpath=build/luajit/?.so -o TAP' $(SPECS)

# The rule specs must fail against the seed document's naive reloader.
check-specs: $(MODULES)
	HOTRELOAD_SPEC_NAIVE=1 $(LUA54) $(BUSTED) --cpath=build/lua54/?.so -o TAP spec/reload_spec.lua | $(LUA54) spec/naive_expect.lua
	HOTRELOAD_SPEC_NAIVE=1 $(LUAJIT) $(BUSTED) --cpath=build/luajit/?.so -o TAP spec/reload_spec.lua | $(LUAJIT) spec/naive_expect.lua

# Instruction counts (callgrind) of figure 1: stable where times are noisy.
profile: deps $(MODULES)
	@sh bench/profile.sh $(LUA54) build/lua54
	@sh bench/profile.sh $(LUAJIT) build/luajit

# A live program that edits its own game script (ARGS=--live: until Ctrl-C, you edit it).
demo: deps build/lua54/hotreload.so
	$(LUA54) -e "package.cpath='build/lua54/?.so;'..package.cpath" examples/demo.lua $(ARGS)

demo-luajit: deps build/luajit/hotreload.so
	$(LUAJIT) -e "package.cpath='build/luajit/?.so;'..package.cpath" examples/demo.lua $(ARGS)

# The scheduled job (.ci/scheduled): 10 000 fuzz cases per VM, then the stress runs.
FUZZ_CASES ?= 10000
fuzz: deps $(MODULES)
	HOTRELOAD_FUZZ_CASES=$(FUZZ_CASES) prove --exec '$(LUA54) $(BUSTED) --cpath=build/lua54/?.so -o TAP' spec/fuzz_spec.lua
	HOTRELOAD_FUZZ_CASES=$(FUZZ_CASES) prove --exec '$(LUAJIT) $(BUSTED) --cpath=build/luajit/?.so -o TAP' spec/fuzz_spec.lua

# Also scheduled: the whole suite under an aggressive collector (both VMs, and generational
# mode on 5.4), 10 000 reloads and a minute of a writer saving 20 files (spec/*_stress.lua),
# and memcheck over the engine specs on Lua 5.4.
STRESS_SPECS   = spec/reloads_stress.lua spec/writer_stress.lua
VALGRIND_SPECS = spec/reload_spec.lua spec/replace_spec.lua spec/lifecycle_spec.lua \
                 spec/badinput_spec.lua spec/watch_spec.lua spec/fuzz_spec.lua spec/compile_spec.lua
stress: deps $(MODULES)
	HOTRELOAD_GC_STRESS=1 prove --exec '$(LUA54) $(BUSTED) --cpath=build/lua54/?.so -o TAP' $(SPECS)
	HOTRELOAD_GC_STRESS=generational prove --exec '$(LUA54) $(BUSTED) --cpath=build/lua54/?.so -o TAP' $(SPECS)
	HOTRELOAD_GC_STRESS=1 prove --exec '$(LUAJIT) $(BUSTED) --cpath=build/luajit/?.so -o TAP' $(SPECS)
	prove --exec '$(LUA54) $(BUSTED) --cpath=build/lua54/?.so -o TAP' $(STRESS_SPECS)
	prove --exec '$(LUAJIT) $(BUSTED) --cpath=build/luajit/?.so -o TAP' $(STRESS_SPECS)
	prove --exec 'valgrind --error-exitcode=99 -q $(LUA54) $(BUSTED) --cpath=build/lua54/?.so -o TAP' $(VALGRIND_SPECS)

# The CI matrix (.ci/hosts/build, .ci/hosts/test): stock Lua 5.4.0, 5.4.6, 5.4.9 (also with
# Lua's own API checks), 5.5.1 and LuaJIT 2.1 (GC64, 32-bit objects, API checks) built from
# release sources; each runs the specs, and the Rust tests link against it. HOSTS picks some.
HOSTS ?= lua540 lua546 lua549 lua549-check lua551 luajit luajit-nogc64 luajit-check
matrix: deps
	.ci/hosts/build $(HOSTS) >/dev/null
	WALK_SPECS='$(WALK_SPECS)' .ci/hosts/test $(HOSTS)

# Scheduled: memcheck over the engine specs on the oldest and newest Lua 5.4 hosts.
VALGRIND_HOSTS ?= lua540 lua549
matrix-valgrind: deps
	.ci/hosts/build $(VALGRIND_HOSTS) >/dev/null
	.ci/hosts/test --valgrind $(VALGRIND_HOSTS)

# Every figure is a ratio to a baseline measured in the same run (see bench/run.lua).
bench: deps $(MODULES)
	@{ echo "Machine: $$(nproc) cores, $$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $$(uname -sr)"; \
	  echo "Command: make bench ($$(date -u +%Y-%m-%d))"; echo; \
	  echo "| VM | figure | value | baseline | ratio | target |"; echo "|---|---|---|---|---|---|"; \
	  $(LUA54) -e "package.cpath='build/lua54/?.so;'..package.cpath" bench/run.lua; \
	  $(LUAJIT) -e "package.cpath='build/luajit/?.so;'..package.cpath" bench/run.lua; \
	  $(CARGO) bench --locked --quiet --bench watch; \
	  if command -v nginx >/dev/null && command -v ab >/dev/null && command -v curl >/dev/null \
	    && [ -e /usr/lib/nginx/modules/ngx_http_lua_module.so ]; \
	  then $(LUAJIT) bench/servers.lua; fi; } \
	  | tee bench/.table.md
	@# the new table replaces the old one; the notes below it are kept
	@{ cat bench/.table.md; echo; sed -n '/^## Notes/,$$p' bench/RESULTS.md; } > bench/.results.md
	@mv bench/.results.md bench/RESULTS.md && rm -f bench/.table.md

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	for f in luajit lua53 lua55; do \
	  $(CARGO) clippy --locked --no-default-features --features $$f,module --target-dir target/$$f -- -D warnings || exit 1; \
	  $(CARGO) clippy --locked --all-targets --no-default-features --features $$f,vendored --target-dir target/$$f-test -- -D warnings || exit 1; \
	done
	RUSTDOCFLAGS='-D warnings' $(CARGO) doc --locked --no-deps --document-private-items
	luacheck spec bench lua examples

# The minimum Rust version (rust-version in Cargo.toml): see .ci/msrv.
msrv:
	@sh .ci/msrv

clean:
	rm -rf build target
