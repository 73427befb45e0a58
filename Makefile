# posagent — developer entry points. `make demo` and `make test` work on a fresh
# Debian machine with Python 3.11; as root they also install the Debian packages.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEB_PACKAGES := xvfb x11-utils x11-xserver-utils xdotool socat adb grim cage \
	tesseract-ocr tesseract-ocr-eng strace iproute2 chromium systemd imagemagick procps util-linux \
	python3-tk fonts-dejavu-core openssl libfaketime debootstrap systemd-container postgresql haproxy \
	age wrk
# the qemu guest of `make field` and the power-cut family of `make reliability`
FIELD_DEB_PACKAGES := qemu-system-x86 qemu-utils e2fsprogs debootstrap
PYTEST_ARGS ?=
# the suite runs on two workers (tests/conftest.py hands out a module at a time and keeps the
# modules sharing a machine-wide resource on one worker); PYTEST_WORKERS=0 runs it in one process
PYTEST_WORKERS ?= 2

.PHONY: all test lint typecheck unit demo bench reliability field field-debs debs venv clean docs i18n

all: test

debs:
	@if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	  missing=""; for p in $(DEB_PACKAGES) python3-venv; do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; fi; \
	else echo "not root: skipping Debian packages ($(DEB_PACKAGES))"; fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

typecheck: venv
	$(VENV)/bin/mypy

unit: venv
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

test: debs venv lint typecheck unit

demo: debs venv
	$(VENV)/bin/posagent demo

bench: debs venv
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) -m bench; rc=$$?; $(PY) -m bench.report && exit $$rc

reliability: debs field-debs venv
	$(PY) -m bench.reliability

field-debs:
	@$(MAKE) --no-print-directory debs DEB_PACKAGES="$(FIELD_DEB_PACKAGES)"

# slow field tests on a qemu guest (TCG): a real framebuffer (vfb) and three power cuts
field: debs field-debs venv
	POSAGENT_FIELD=1 $(VENV)/bin/pytest tests/field/test_guest_framebuffer.py \
		tests/field/test_guest_powercut.py $(PYTEST_ARGS)

docs:
	$(PY) docs/sync_readme.py

# The collector's gettext catalogs (collector/i18n.py): extract the marked strings (_,
# gettext, N_), merge them into each language's .po (translate what comes out empty),
# compile the .mo. The .mo files are committed: a fresh clone or a wheel has them without
# this step; tests/collector/test_i18n.py fails when a .po or a .mo is out of step.
LOCALE := collector/locale
i18n: venv
	$(VENV)/bin/pybabel extract -k N_ --add-location=file --sort-output --project=posagent \
		--copyright-holder="posagent authors" -o $(LOCALE)/posagent.pot agent/bundle/remedies.py agent/bundle/html.py collector
	$(VENV)/bin/pybabel update -D posagent -i $(LOCALE)/posagent.pot -d $(LOCALE) \
		--no-fuzzy-matching --ignore-obsolete --ignore-pot-creation-date
	$(VENV)/bin/pybabel compile -D posagent -d $(LOCALE) --statistics

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
