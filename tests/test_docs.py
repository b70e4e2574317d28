"""The docs (README.md and docs/*.md) name only settings, commands and pages that exist, and document
every setting and command of PACS-lite's own.

Conventions the docs follow, which these tests rely on:

- A setting or environment variable is written as inline code holding its name alone, or `NAME=value`:
  `RADIOLOGY_URL_EXPIRES`, `PACS_ALLOW_PLAIN_HTTP=1`. Every such all-caps name (^[A-Z][A-Z0-9_]+$) must be
  something a reader can set: an attribute of config.settings; an environment variable that config/ or the
  root conftest.py reads (env_str/env_bool/env_int/env_list("NAME"), os.environ.get/setdefault("NAME"),
  os.environ["NAME"], os.getenv("NAME"), plus NAME_FILE for a variable read with env_str, which accepts a
  file); a variable of the Makefile (PORT, VIEWER_PORT, ...); or a variable docker-compose.yml interpolates
  (${POSTGRES_PASSWORD}). Other all-caps words (HTTP methods, modality codes) are not put in inline code alone.
- A management command is written as `manage.py NAME` (inline or in a code block).
- Links between the pages are relative Markdown links; an anchor is GitHub's slug of a heading.

What counts as PACS-lite's own settings (each must be named in docs/*.md):

- every environment variable config/settings.py reads: that is how anyone sets anything, Django's and
  django-storages' settings included (DJANGO_DEBUG, DATABASE_URL, AWS_S3_ENDPOINT_URL, ...);
- every module-level setting of config/settings.py whose name starts with RADIOLOGY_, PACS_, OHIF_ or DEMO_,
  the project's prefixes, whether or not it comes from the environment.

Not required: Django's own settings (names in django.conf.global_settings: DEBUG, DATABASES, ...), the
settings of libraries configured in code (AXES_*, CORS_*, REST_FRAMEWORK, SPECTACULAR_SETTINGS; the
variables that feed them are required above), and values derived in settings.py for its own use
(BASE_DIR, VAR_DIR, HTTPS_ONLY, S3_BACKEND, ...), which nobody sets.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path

import pytest
from django.conf import global_settings
from django.core.management import get_commands

import config.settings as project_settings

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
SETTINGS_SOURCE = ROOT / "config" / "settings.py"
COMMANDS_DIR = ROOT / "apps" / "radiology" / "management" / "commands"
PROJECT_PREFIXES = ("RADIOLOGY_", "PACS_", "OHIF_", "DEMO_")
ENV_HELPERS = {"env_str", "env_bool", "env_int", "env_list"}
# Pages the README's "Where to go next" must reach; each is checked to exist.
EXPECTED_PAGES = {
    "api.md",
    "dicomweb.md",
    "errors.md",
    "operations.md",
    "performance.md",
    "security.md",
    "testing.md",
    "viewers.md",
}

_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"`([^`\n]+)`")
_SETTING_NAME = re.compile(r"([A-Z][A-Z0-9_]+)(?:=\S*)?")
_MANAGE_COMMAND = re.compile(r"manage\.py\s+([a-z][a-z0-9_]*)")
_LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.MULTILINE)
_MAKE_ASSIGN = re.compile(r"^(?:export\s+)?([A-Z][A-Z0-9_]*)\s*[?:+]?=", re.MULTILINE)
_MAKE_REFERENCE = re.compile(r"\$\(([A-Z][A-Z0-9_]*)\)")
_COMPOSE_INTERPOLATION = re.compile(r"\$\{([A-Z][A-Z0-9_]*)")


# --- reading the docs ------------------------------------------------------------------------------


def doc_pages() -> list[Path]:
    """README.md and every page under docs/."""
    return [README, *sorted(DOCS.glob("*.md"))]


def docs_folder_pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def without_code_blocks(text: str) -> str:
    return _FENCE.sub("", text)


def setting_names_in(pages: Iterable[Path]) -> dict[str, set[str]]:
    """All-caps names written as inline code (`NAME` or `NAME=value`), each with the pages naming it."""
    found: dict[str, set[str]] = {}
    for page in pages:
        for code in _INLINE_CODE.findall(without_code_blocks(page.read_text(encoding="utf-8"))):
            match = _SETTING_NAME.fullmatch(code.strip())
            if match:
                found.setdefault(match.group(1), set()).add(page.relative_to(ROOT).as_posix())
    return found


def commands_in(pages: Iterable[Path]) -> dict[str, set[str]]:
    """Every `manage.py NAME` of the pages (code blocks included), each with the pages naming it."""
    found: dict[str, set[str]] = {}
    for page in pages:
        for name in _MANAGE_COMMAND.findall(page.read_text(encoding="utf-8")):
            found.setdefault(name, set()).add(page.relative_to(ROOT).as_posix())
    return found


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"`([^`]*)`", r"\1", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors_of(page: Path) -> set[str]:
    """The anchors of a page's headings (a repeated heading gets -1, -2, ... as on GitHub)."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for _hashes, title in _HEADING.findall(without_code_blocks(page.read_text(encoding="utf-8"))):
        slug = github_slug(title)
        count = seen.get(slug, 0)
        anchors.add(slug if count == 0 else f"{slug}-{count}")
        seen[slug] = count + 1
    return anchors


def relative_links(page: Path) -> Iterator[str]:
    """Link targets of a page that are not absolute URLs (inline code and code blocks left out)."""
    text = _INLINE_CODE.sub("", without_code_blocks(page.read_text(encoding="utf-8")))
    for target in _LINK.findall(text):
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target):
            yield target


def broken_link(page: Path, target: str) -> str | None:
    """Why the link does not resolve, or None when it does."""
    path_part, _hash, anchor = target.partition("#")
    linked = (page.parent / path_part).resolve() if path_part else page
    if not linked.exists():
        return f"{page.relative_to(ROOT).as_posix()}: {target} (no such file)"
    if anchor:
        if linked.suffix != ".md":
            return f"{page.relative_to(ROOT).as_posix()}: {target} (anchor into a file that is not Markdown)"
        if anchor not in anchors_of(linked):
            return f"{page.relative_to(ROOT).as_posix()}: {target} (no heading with that anchor)"
    return None


# --- reading the code ------------------------------------------------------------------------------


def _constant_first_argument(call: ast.Call) -> str | None:
    if call.args and isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str):
        return call.args[0].value
    return None


def _is_os_environ(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "environ"
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
    )


def environment_reads(source: Path) -> tuple[set[str], set[str]]:
    """(every environment variable the module reads, the ones read as text through env_str).

    Recognised: env_str/env_bool/env_int/env_list("NAME", ...), os.environ.get/setdefault("NAME"),
    os.environ["NAME"] and os.getenv("NAME").
    """
    names: set[str] = set()
    text_names: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            function = node.func
            helper = function.id if isinstance(function, ast.Name) else None
            if isinstance(function, ast.Attribute) and function.attr in ENV_HELPERS:
                helper = function.attr
            name = _constant_first_argument(node)
            if name is None:
                continue
            if helper in ENV_HELPERS:
                names.add(name)
                if helper == "env_str":
                    text_names.add(name)
            elif isinstance(function, ast.Attribute) and (
                (function.attr in {"get", "setdefault"} and _is_os_environ(function.value))
                or (function.attr == "getenv" and isinstance(function.value, ast.Name) and function.value.id == "os")
            ):
                names.add(name)
        elif (
            isinstance(node, ast.Subscript)
            and _is_os_environ(node.value)
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, str)
        ):
            names.add(node.slice.value)
    return names, text_names


@cache
def settings_environment() -> frozenset[str]:
    """Environment variables config/settings.py reads."""
    return frozenset(environment_reads(SETTINGS_SOURCE)[0])


@cache
def settable_names() -> frozenset[str]:
    """Every all-caps name the docs may name: see the module docstring."""
    names: set[str] = {name for name in vars(project_settings) if name.isupper()}
    for source in [*sorted((ROOT / "config").glob("*.py")), ROOT / "conftest.py"]:
        read, read_as_text = environment_reads(source)
        names |= read | {f"{name}_FILE" for name in read_as_text}
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    names |= set(_MAKE_ASSIGN.findall(makefile)) | set(_MAKE_REFERENCE.findall(makefile))
    names |= set(_COMPOSE_INTERPOLATION.findall((ROOT / "docker-compose.yml").read_text(encoding="utf-8")))
    return frozenset(names)


@cache
def module_level_settings() -> frozenset[str]:
    """Upper-case names config/settings.py assigns at module level."""
    names: set[str] = set()
    for node in ast.parse(SETTINGS_SOURCE.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        else:
            continue
        names |= {target.id for target in targets if isinstance(target, ast.Name) and target.id.isupper()}
    return frozenset(names)


def project_settings_to_document() -> set[str]:
    """PACS-lite's own settings (module docstring): the environment settings.py reads, and the prefixed names."""
    prefixed = {
        name
        for name in module_level_settings()
        if name.startswith(PROJECT_PREFIXES) and not hasattr(global_settings, name)
    }
    return set(settings_environment()) | prefixed


def radiology_commands() -> set[str]:
    return {path.stem for path in COMMANDS_DIR.glob("*.py") if not path.stem.startswith("_")}


# --- the checks ------------------------------------------------------------------------------------


def test_the_docs_pages_exist() -> None:
    missing = sorted(page for page in EXPECTED_PAGES if not (DOCS / page).is_file())
    assert missing == [], f"docs/ lacks these pages: {missing}"


def test_the_readers_see_what_the_docs_name() -> None:
    """Guards the parsing itself: names and commands known to be in the docs are found."""
    named = setting_names_in(doc_pages())
    assert {"RADIOLOGY_URL_EXPIRES", "PACS_ALLOW_PLAIN_HTTP", "DEMO_PASSWORD", "VIEWER_PORT"} <= set(named)
    assert {"seed_demo", "import_radiology"} <= set(commands_in(doc_pages()))
    assert {"RADIOLOGY_URL_EXPIRES", "DJANGO_SECRET_KEY", "DATABASE_URL"} <= settings_environment()
    assert "RADIOLOGY_SIGNED_URLS" in project_settings_to_document()


def test_every_setting_the_docs_name_exists() -> None:
    named = setting_names_in(doc_pages())
    unknown = {name: sorted(pages) for name, pages in named.items() if name not in settable_names()}
    assert unknown == {}, (
        "The docs name settings or environment variables that neither config.settings, the environment "
        "config/ or conftest.py reads, the Makefile nor docker-compose.yml has (name: pages): "
        f"{dict(sorted(unknown.items()))}"
    )


def test_every_pacs_lite_setting_is_documented_in_docs() -> None:
    documented = set(setting_names_in(docs_folder_pages()))
    undocumented = sorted(project_settings_to_document() - documented)
    assert undocumented == [], (
        "These settings or environment variables of config/settings.py are named nowhere in docs/*.md "
        f"(add them to docs/operations.md's tables as `NAME`): {undocumented}"
    )


def test_every_management_command_the_docs_name_exists() -> None:
    named = commands_in(doc_pages())
    unknown = {name: sorted(pages) for name, pages in named.items() if name not in get_commands()}
    assert unknown == {}, f"The docs name management commands that do not exist (name: pages): {unknown}"


def test_every_radiology_management_command_is_documented_in_docs() -> None:
    documented = set(commands_in(docs_folder_pages()))
    undocumented = sorted(radiology_commands() - documented)
    assert undocumented == [], (
        "These commands of apps/radiology/management/commands/ are not named as `manage.py NAME` in "
        f"docs/*.md (add them to docs/operations.md's table): {undocumented}"
    )


@pytest.mark.parametrize("page", doc_pages(), ids=lambda page: page.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page: Path) -> None:
    broken = [problem for target in relative_links(page) if (problem := broken_link(page, target))]
    assert broken == [], f"Links that do not resolve: {broken}"


def test_the_readme_links_every_docs_page() -> None:
    linked = {
        (README.parent / target.partition("#")[0]).resolve()
        for target in relative_links(README)
        if target.partition("#")[0]
    }
    unlinked = sorted(page.name for page in docs_folder_pages() if page.resolve() not in linked)
    assert unlinked == [], f"README.md links none of these docs pages: {unlinked}"
