# Two commands on a fresh machine: `make demo` and `make test`. Each installs what it needs.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= data
CITY ?= $(DATA)/demo-city
WAREHOUSE ?= $(DATA)/warehouse
SOURCES ?= 8
PROJECTS ?= 60
SEED ?= 7
AS_OF ?= $(shell TZ=Asia/Shanghai date +%F)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test install postgres lint clean

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# PostgreSQL server binaries for the tests (the tests start their own server on a loopback port).
postgres:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  echo "installing PostgreSQL (apt)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql >/dev/null; \
	fi

demo: install
	rm -rf $(CITY)
	$(VENV)/bin/qingfeng simulate --out $(CITY) --sources $(SOURCES) --projects-per-source $(PROJECTS) --seed $(SEED) --as-of $(AS_OF)
	$(VENV)/bin/qingfeng run --sources $(CITY)/sources.toml --warehouse $(WAREHOUSE) --as-of $(AS_OF) --dry-run-mail $(DATA)/outbox
	@echo
	@echo "marts:      $(WAREHOUSE)/marts/<mart>/as_of=$(AS_OF)/"
	@echo "data docs:  $(WAREHOUSE)/docs/as_of=$(AS_OF)/index.html"
	@echo "quarantine: $(WAREHOUSE)/quarantine/as_of=$(AS_OF)/"
	@echo "emails:     $(DATA)/outbox/*.eml (alerts written as files, not sent; see the alerts mart)"
	@echo "query:      $(VENV)/bin/qingfeng query --warehouse $(WAREHOUSE) \"SELECT rag, count(*) FROM project_health GROUP BY rag\""
	$(VENV)/bin/qingfeng query --warehouse $(WAREHOUSE) "SELECT rule_id, family, count(*) AS flags FROM dq_flags GROUP BY ALL ORDER BY rule_id"

test: install postgres
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(DATA) .pytest_cache
