# One command runs the gateway, one runs the tests; both set up .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CONFIG ?= etc/tgw.toml

.PHONY: run test lint format check-config clean fuzz

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip 'setuptools>=77' wheel
	$(BIN)/python -m pip install -q -e '.[test]'
	# An editable install cannot place twisted/plugins/tgw.py in Twisted's plugin
	# namespace, so expose just that file (not the repo root) on sys.path.
	mkdir -p $(VENV)/twistd-plugins/twisted/plugins
	ln -sf $(CURDIR)/twisted/plugins/tgw.py $(VENV)/twistd-plugins/twisted/plugins/tgw.py
	$(BIN)/python -c 'import sysconfig, pathlib; pathlib.Path(sysconfig.get_paths()["purelib"], "tgw-twistd-plugins.pth").write_text("$(CURDIR)/$(VENV)/twistd-plugins\n")'
	touch $@

run: $(STAMP)
	$(BIN)/tgw run --config $(CONFIG)

# The Debian servers the tests start (dnsmasq, haproxy, nginx + stream module, wrk),
# installed when missing: see scripts/test-deps.sh.
test: $(STAMP)
	sh scripts/test-deps.sh
	$(BIN)/pytest

# Mutation testing of the decision path (docs/testing.md): every mutant, 15-25 min.
.PHONY: mutate
mutate: $(STAMP)
	$(BIN)/python tools/mutate.py

# Coverage-guided fuzzing (fuzz/run.py), FUZZ_SECONDS per target; crashes land in var/fuzz.
FUZZ_SECONDS ?= 60
fuzz: $(STAMP)
	$(BIN)/python -c 'import atheris' 2>/dev/null || $(BIN)/python -m pip install -q -e '.[fuzz]'
	$(BIN)/python -m fuzz.run --seconds $(FUZZ_SECONDS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

check-config: $(STAMP)
	$(BIN)/tgw check-config $(CONFIG)

clean:
	rm -rf $(VENV) var build *.egg-info
