# PACS-lite. Two commands: `make run` (set up, seed, serve) and `make test` (set up, run the suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
VIEWER_PORT ?= 3000
HOST ?= 127.0.0.1
STAMP := $(VENV)/.installed
OHIF_VERSION := 3.13.2
OHIF_STAMP := var/ohif/.installed-$(OHIF_VERSION)
# Where `make viewer` installs the dist, whatever PACS_VAR_DIR says (the tests serve from a temp var/).
OHIF_DIST_DIR ?= $(CURDIR)/var/ohif/dist
# The serving environment (scripts/serve_env.sh): production settings with a generated secret key
# in var/, plain HTTP, the hosts HOST serves (with HOST=0.0.0.0, this machine's addresses), and
# OHIF_VIEWER_URL on VIEWER_PORT. DJANGO_DEBUG stays off unless it is set to 1.
SERVE_VARIABLES = HOST='$(HOST)' PORT='$(PORT)' VIEWER_PORT='$(VIEWER_PORT)' OHIF_DIST_DIR='$(OHIF_DIST_DIR)'
SERVE_ENV = $(SERVE_VARIABLES) sh scripts/serve_env.sh

export DJANGO_SETTINGS_MODULE ?= config.settings

.PHONY: setup serve-packages system-packages browser-packages viewer run test lint format migrate seed check-migrations clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

## setup: create .venv and install the pinned requirements
setup: $(STAMP)

## migrate: create or update the database (SQLite under var/ unless DATABASE_URL is set)
migrate: setup
	mkdir -p var
	$(SERVE_ENV) $(BIN)/python manage.py migrate --noinput

## seed: demo users, orders and a study of real sample images
seed: migrate
	$(SERVE_ENV) $(BIN)/python manage.py seed_demo --with-images --if-empty

$(OHIF_STAMP):
	bash scripts/install_ohif.sh $(OHIF_VERSION) var/ohif

## viewer: install the pinned OHIF build and write its app-config.js from the settings
viewer: setup $(OHIF_STAMP)
	$(SERVE_ENV) $(BIN)/python manage.py write_ohif_config

## run: set everything up and serve the API on $(HOST):$(PORT) and the viewer on $(HOST):$(VIEWER_PORT)
# as production does: granian app servers behind nginx on both ports, under supervisord
# (scripts/serve.sh, deploy/supervisord.conf); a crashed process is restarted, Ctrl-C stops them all.
run: seed viewer serve-packages
	$(SERVE_VARIABLES) exec bash scripts/serve.sh

## serve-packages: the Debian package `make run` serves with (nginx-light, the viewer's origin)
serve-packages:
	bash scripts/system_packages.sh serve

## system-packages: Debian packages the tests use (nginx-light, dcmtk, dicom3tools, Orthanc)
system-packages:
	bash scripts/system_packages.sh

## browser-packages: Debian's chromium (and a font) for the OHIF browser tests; Playwright drives it
browser-packages:
	bash scripts/browser_packages.sh

## test: set up and run the whole suite (SQLite + filesystem, S3 via moto's server, OHIF in headless Chromium)
# pytest gets config.test_settings explicitly: the config.settings exported above would beat pytest.ini.
test: setup system-packages browser-packages viewer
	$(BIN)/python manage.py makemigrations --check --dry-run --settings=config.test_settings
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	DJANGO_SETTINGS_MODULE=config.test_settings $(BIN)/pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) var

## bench: PACS-lite against Orthanc on the same data (~3 min; as root: may apt-get install orthanc, runs PostgreSQL)
.PHONY: bench
bench: setup serve-packages
	$(BIN)/python bench/compare_orthanc.py

## bench-app-servers: the same PACS-lite behind the shipped granian (API port, and behind nginx on the viewer port) and behind gunicorn, frames and rendered under 1, 8, 32 connections (~8 min; as root: runs PostgreSQL)
.PHONY: bench-app-servers
bench-app-servers: setup serve-packages
	$(BIN)/python bench/compare_app_servers.py $(ARGS)

## bench-dimse: PACS-lite's DICOM listener against Orthanc's DICOM server, same files (~8 min; as root: installs dcmtk and orthanc if missing, runs PostgreSQL)
.PHONY: bench-dimse
bench-dimse: setup system-packages
	$(BIN)/python bench/compare_dimse.py

## bench-forward: store and forward over a 1 Mbit/s link dropped every 30 s, PACS-lite's forwarder against Orthanc's peers (~1 h at full size; --scale via ARGS; as root: may apt-get install orthanc)
.PHONY: bench-forward
bench-forward: setup
	$(BIN)/python bench/forward.py $(ARGS)

## bench-hostile: hostile and odd input against the app server (granian) + PostgreSQL, production settings (under a minute; as root: runs PostgreSQL)
.PHONY: bench-hostile
bench-hostile: setup
	$(BIN)/python bench/hostile_inputs.py

## bench-scale: a year of a clinic's studies (100,000 instances in 2,000 studies through import_radiology), QIDO, metadata, images, STOW-RS at 1,000 and 100,000 (~1 h on 2 cores; --studies/--instances via ARGS; as root: runs PostgreSQL)
.PHONY: bench-scale
bench-scale: setup serve-packages
	$(BIN)/python bench/scale.py $(ARGS)
