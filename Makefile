# PACS-lite. Two commands: `make run` (set up, seed, serve) and `make test` (set up, run the suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
HOST ?= 127.0.0.1
STAMP := $(VENV)/.installed

export DJANGO_SETTINGS_MODULE ?= config.settings

.PHONY: setup system-packages run test lint format migrate seed check-migrations clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

## setup: create .venv and install the pinned requirements
setup: $(STAMP)

## migrate: create or update the database (SQLite under var/ unless DATABASE_URL is set)
migrate: setup
	mkdir -p var
	DJANGO_DEBUG=$${DJANGO_DEBUG:-1} $(BIN)/python manage.py migrate --noinput

## seed: demo users, orders and a study of real sample images
seed: migrate
	DJANGO_DEBUG=$${DJANGO_DEBUG:-1} $(BIN)/python manage.py seed_demo --with-images --if-empty

## run: set everything up and serve on $(HOST):$(PORT)
run: seed
	@echo ""
	@echo "PACS-lite on http://$(HOST):$(PORT)/  (admin: http://$(HOST):$(PORT)/admin/)"
	@echo "Demo logins: doctor, radtech, nurse, admin; password: $${DEMO_PASSWORD:-pacs-demo-2026}"
	@echo ""
	DJANGO_DEBUG=$${DJANGO_DEBUG:-1} $(BIN)/python manage.py runserver $(HOST):$(PORT)

## system-packages: Debian packages the tests use (dcmtk)
system-packages:
	bash scripts/system_packages.sh

## test: set up and run the whole suite (SQLite + filesystem, and S3 via moto's server)
test: setup system-packages
	$(BIN)/python manage.py makemigrations --check --dry-run --settings=config.test_settings
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) var
