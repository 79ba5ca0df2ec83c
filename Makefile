# The two commands of the README:
#   make demo   compress synthetic and real still shots with the HDF5 filter, check them
#   make test   run the test suite
# Both install what a fresh Debian machine lacks first: apt packages, a virtualenv in
# .venv, the package with its test extras.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := g++ make python3-dev python3-venv pkg-config libzstd-dev liblz4-dev libxxhash-dev \
                libhtscodecs-dev hdf5-tools
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test bench deps venv install clean

demo: install
	$(PY) -m redml_reduce.demo

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
	$(PY) -m pip install -q -e ".[test]"

clean:
	rm -rf build *.egg-info redml_reduce/_core*.so redml_reduce/plugins/*.so
