# Restitution — `make demo` and `make test` work from a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench migration translations contracts clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $(STAMP)

demo: setup
	$(BIN)/restitution demo

test: setup
	$(BIN)/python -m pytest -n 2 --dist loadfile -q

bench: setup
	$(BIN)/python bench/run_all.py

# gettext catalogs: extract, update and compile (the compiled .mo files are committed).
translations: setup
	$(BIN)/pybabel -q extract -F babel-emails.cfg -o templates/locale/emails.pot --project=Restitution --version=0.1 --copyright-holder="Restitution contributors" --msgid-bugs-address="" --sort-by-file --no-wrap templates/email
	$(BIN)/pybabel -q update -D emails -i templates/locale/emails.pot -d templates/locale --no-wrap --ignore-obsolete
	$(BIN)/pybabel compile -D emails -d templates/locale --statistics
	$(BIN)/pybabel -q extract -F babel-pages.cfg -o templates/locale/pages.pot --project=Restitution --no-wrap .
	$(BIN)/pybabel -q update -D pages -i templates/locale/pages.pot -d templates/locale --no-wrap --ignore-obsolete
	$(BIN)/pybabel compile -D pages -d templates/locale --statistics

# Pre-release only: fold every migration into one initial migration regenerated from claims/models.py.
migration: setup
	$(BIN)/python migrations/regenerate.py

# Rebuild claims/payouts/rails/evm_artifacts.json (ABI + bytecode) from contracts/*.sol with solc-js from npm.
contracts:
	cd contracts && npm ci --no-audit --no-fund && node build.js

clean:
	rm -rf var
