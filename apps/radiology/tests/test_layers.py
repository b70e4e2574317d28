"""The import direction of apps/radiology: ways in and read paths on top, services in the middle,
records and the image store at the bottom (the contract is in pyproject.toml, [tool.importlinter]).

import-linter (a well-kept library for exactly this) checks the contract; this module also
checks that every package and module of the app is placed in a layer, so a new one cannot
slip past the contract by not being named in it.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import grimp

import apps.radiology

APP_DIR = Path(apps.radiology.__file__).parent
REPO = APP_DIR.parents[1]

# Parts of the app that are not code in the layers: Django's app config (it only wires the
# database triggers in), migrations (frozen history), the tests and the templates.
NOT_LAYERED = {"apps", "migrations", "tests", "templates", "__init__"}


def _contract() -> dict:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = config["contracts"]
    return contract


def _layered_names() -> set[str]:
    return {name.strip() for layer in _contract()["layers"] for name in layer.replace("|", ":").split(":")}


def test_the_import_contract_is_kept() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(  # noqa: S603 (the venv's own lint-imports, fixed arguments)
        [str(lint_imports), "--no-cache", "--config", str(REPO / "pyproject.toml")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "apps/radiology layers point one way KEPT" in result.stdout
    assert "Contracts: 1 kept, 0 broken." in result.stdout


def test_every_package_and_module_of_the_app_is_in_a_layer() -> None:
    present = {
        path.stem if path.suffix == ".py" else path.name
        for path in APP_DIR.iterdir()
        if (path.suffix == ".py" or (path.is_dir() and not path.name.startswith(("_", "."))))
    } - NOT_LAYERED
    assert present == _layered_names(), (
        f"not in a layer of pyproject.toml: {sorted(present - _layered_names())}; "
        f"in a layer but gone: {sorted(_layered_names() - present)}"
    )


def test_the_layers_go_from_ways_in_down_to_the_base() -> None:
    layers = [set(layer.replace("|", ":").replace(" ", "").split(":")) for layer in _contract()["layers"]]
    assert layers == [
        {"urls", "admin", "management", "api", "dicomweb", "dimse", "viewers", "operations", "frontdoor", "forwarding"},
        {"pacs_lite_service", "ingest", "access"},
        {"outbox"},
        {"storage", "models", "db_triggers", "imagefiles"},
        {"fastpaths", "errors"},
    ]


def test_an_upward_import_is_caught() -> None:
    """The contract bites: one import from the bottom up (models importing a REST view) breaks it."""
    graph = grimp.build_graph("apps", cache_dir=None)
    layers = [grimp.Layer(*layer.replace(" ", "").split(":"), independent=False) for layer in _contract()["layers"]]
    assert graph.find_illegal_dependencies_for_layers(layers=layers, containers={"apps.radiology"}) == set()

    graph.add_import(importer="apps.radiology.models", imported="apps.radiology.api.views")
    (illegal,) = graph.find_illegal_dependencies_for_layers(layers=layers, containers={"apps.radiology"})
    assert (illegal.importer, illegal.imported) == ("apps.radiology.models", "apps.radiology.api")
