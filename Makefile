# The two commands of the README:
#   make demo   compress synthetic and real still shots with the HDF5 filter, check them
#   make test   run the test suite
#   make fuzz   build the libFuzzer targets (csrc/fuzz/) and fuzz them for FUZZ_SECONDS each
# Both install what a fresh Debian machine lacks first: apt packages, a virtualenv in
# .venv, the package with its test extras.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := g++ make python3-dev python3-venv pkg-config libzstd-dev liblz4-dev libxxhash-dev \
                libhtscodecs-dev hdf5-tools clang libclang-rt-14-dev valgrind dials \
                chromium pocl-opencl-icd
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test bench fuzz fuzz-build deps venv install clean

demo: install
	$(PY) -m redml_study.demo

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/codec.py

deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

$(PY): | deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

venv: $(PY)

# Rebuilds the C++ core whenever a source changed.
install: deps $(PY)
	$(PY) -m pip install -q -e ".[test]" -e ./study

# ---- fuzzing (docs/reliability.md) ----
# The targets fuzz the codec and the HDF5 filter: the plugin's sources (csrc/sources.mk, the
# one list of them, which setup.py reads too).
include csrc/sources.mk
CLANGXX ?= $(firstword $(foreach c,clang++ clang++-16 clang++-15 clang++-14,$(shell command -v $(c) 2>/dev/null)))
FUZZ_DIR := build/fuzz
# -ffp-contract=off: as the release build (setup.py), so the lattice prediction gives the same bits.
FUZZ_CXXFLAGS := -std=c++17 -g -O1 -ffp-contract=off -fno-omit-frame-pointer -fsanitize=address,undefined \
                 -fno-sanitize-recover=all -Icsrc -MMD -MP
FUZZ_OBJ := $(patsubst csrc/%.cpp,$(FUZZ_DIR)/obj/%.o,$(REDML_PLUGIN_SRC))
FUZZ_TARGETS := $(FUZZ_DIR)/fuzz_decode $(FUZZ_DIR)/fuzz_filter $(FUZZ_DIR)/fuzz_roundtrip
FUZZ_SECONDS ?= 300

fuzz-build: $(FUZZ_TARGETS)

$(FUZZ_DIR)/obj/%.o: csrc/%.cpp
	@test -n "$(CLANGXX)" || { echo "clang++ not found: apt-get install clang libclang-rt-14-dev"; exit 1; }
	@mkdir -p $(dir $@)
	$(CLANGXX) $(FUZZ_CXXFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@

$(FUZZ_DIR)/fuzz_%: $(FUZZ_DIR)/obj/fuzz/fuzz_%.o $(FUZZ_OBJ)
	$(CLANGXX) $(FUZZ_CXXFLAGS) -fsanitize=fuzzer $^ $(addprefix -l,$(REDML_LIBS)) -ldl -lpthread -o $@

-include $(wildcard $(FUZZ_DIR)/obj/*.d $(FUZZ_DIR)/obj/fuzz/*.d)

# Long run: every target (or those in FUZZ_ONLY, e.g. "decode filter") for FUZZ_SECONDS (or
# FUZZ_RUNS executions), FUZZ_JOBS processes each, seeded with chunks of every mode x dtype x
# codec; prints executions, crashes and sanitizer reports.
fuzz: install fuzz-build
	$(PY) benchmarks/fuzz.py --no-build --seconds $(FUZZ_SECONDS) $(if $(FUZZ_RUNS),--runs $(FUZZ_RUNS)) \
		$(if $(FUZZ_JOBS),--jobs $(FUZZ_JOBS)) $(if $(FUZZ_ONLY),--targets $(FUZZ_ONLY)) --json build/fuzz/results.json

clean:
	rm -rf build *.egg-info redml_reduce/_core*.so redml_reduce/plugins/*.so
