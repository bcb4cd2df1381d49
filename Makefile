# survey-kit: every target works on a fresh machine with only python3 and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test up down status lab demo

install: $(STAMP)

# Re-installs only when the project's declared dependencies change.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest

up: install
	$(BIN)/survey-kit up

down: install
	$(BIN)/survey-kit down

status: install
	$(BIN)/survey-kit status

# JupyterLab refuses to run as root without --allow-root (containers and CI machines often are root).
# The kernels run in notebooks/: they are told where ./survey-kit.yaml is (unless SURVEY_KIT_CONFIG says).
lab: up
	SURVEY_KIT_CONFIG="$${SURVEY_KIT_CONFIG:-$$([ -f survey-kit.yaml ] && echo "$(CURDIR)/survey-kit.yaml")}" \
	$(BIN)/jupyter lab --notebook-dir=notebooks --ip=127.0.0.1 $$([ "$$(id -u)" = 0 ] && echo --allow-root)

# The whole data path on the embedded stack: bot, 300 simulated respondents, ksql pipeline, comparison, report.
demo: install
	$(BIN)/survey-kit demo
