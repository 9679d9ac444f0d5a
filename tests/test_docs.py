"""The docs site: it builds strictly, its settings page is the settings classes, its quality page includes the
generated tables instead of copying them, and the changelog's newest release is the package's version."""

from __future__ import annotations

import html
import importlib.util
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import arr_coc

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
QUALITY = DOCS / "quality"
GENERATED = {QUALITY / name for name in ("quality.md", "summary.md", "distill.md", "pre-post-1000.md")}
CHANGELOG = ROOT / "CHANGELOG.md"
SECTIONS = {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}


def _hook():
    spec = importlib.util.spec_from_file_location("settings_table", DOCS / "hooks" / "settings_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (make docs installs it)")
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def _text(page: Path) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", page.read_text()))


def test_the_settings_page_holds_every_field_of_every_settings_class(site):
    hook = _hook()
    classes = hook.settings_classes()
    assert classes, "no settings class found"
    page = _text(site / "settings" / "index.html")
    fields = 0
    for cls in classes:
        for name, field in cls.model_fields.items():
            variable = hook.env_name(cls, name, field)
            assert re.fullmatch(r"ARR_COC_[A-Z0-9_]+", variable), variable
            assert variable in page, f"{cls.__qualname__}.{name} ({variable}) is missing from the settings page"
            fields += 1
    assert fields >= 40
    assert "ARR_COC_SCHEDULER" in page and "ARR_COC_VLM_ROWS" in page
    assert "<!-- settings-table -->" not in (site / "settings" / "index.html").read_text()


def test_each_field_is_shown_once_under_the_class_that_defines_it():
    tables = _hook().settings_markdown()
    variables = re.findall(r"^\| `(ARR_COC_[A-Z0-9_]+)` \|", tables, re.M)
    assert len(variables) == len(set(variables)), "a field is shown twice"
    assert "| `ARR_COC_FEATURE_CACHE_MB` | `256` | number ≥ 0 |" in tables


def test_settings_modules_that_do_not_exist_are_skipped(monkeypatch):
    hook = _hook()
    monkeypatch.setattr(hook, "SETTINGS_MODULES", ("no_such_package.settings", "arr_coc.settings"))
    assert [cls.__name__ for cls in hook.settings_classes()] == ["Settings"]
    monkeypatch.setattr(hook, "SETTINGS_MODULES", ("no_such_package.settings",))
    with pytest.raises(RuntimeError, match="no settings class"):
        hook.settings_markdown()


def _rows(table: Path) -> list[list[str]]:
    lines = [line for line in table.read_text().splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def test_the_quality_page_includes_the_generated_tables(site):
    page = _text(site / "quality" / "index.html")
    for table in (QUALITY / "summary.md", QUALITY / "quality.md"):
        for row in _rows(table):
            assert " ".join(row[:2]) in " ".join(page.split()), f"{table.name}: {row[:2]} is not on the quality page"
    assert "answer fidelity" in page.lower() and "attention, distilled" in page
    source = (QUALITY / "index.md").read_text()
    for name in ("summary.md", "quality.md", "distill.md"):
        assert f'--8<-- "docs/quality/{name}' in source
    assert QUALITY.joinpath("distill.md").read_text().startswith("# "), "the page includes distill.md from line 2"


def test_no_page_copies_the_quality_tables():
    pages = [p for p in DOCS.rglob("*.md") if p not in GENERATED] + [ROOT / "README.md"]
    for row in _rows(QUALITY / "summary.md"):
        numbers = " | ".join(row[1:3])  # the first two accuracies of a budget's row
        for page in pages:
            assert numbers not in page.read_text(), f"{page.relative_to(ROOT)} copies summary.md's {row[0]} row"


def test_the_changelog_keeps_a_changelog_and_its_newest_release_is_the_version():
    text = CHANGELOG.read_text()
    versions = re.findall(r"^## \[(\d+\.\d+\.\d+)\]", text, re.M)
    assert versions[0] == arr_coc.__version__
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"] == arr_coc.__version__
    assert versions == sorted(versions, key=lambda v: tuple(map(int, v.split("."))), reverse=True)
    assert set(re.findall(r"^### (.+)$", text, re.M)) <= SECTIONS
    newest = text.split(f"## [{versions[0]}]")[1].split("\n## [")[0]
    for moved in ("serving.settings", "serving.wire", "serving.draining", "testkit", "arr-coc recipe"):
        assert moved in newest, f"the release notes say where {moved} came from"
    for name in ("ARR_COC_SCHEDULER", "ARR_COC_VLM_ROWS", "ARR_COC_VLM_CACHE_TOKENS", "ARR_COC_VLM_PREFILL_TOKENS"):
        assert name in newest
    for name in ("arr_coc_running_rows", "arr_coc_queue_depth", "arr_coc_decode_step_seconds"):
        assert name in newest
    for command in ("arr-coc distill-scorer", "arr-coc export-questions", "arr-coc quality"):
        assert command in newest


def test_the_changelog_page_includes_the_changelog(site):
    page = _text(site / "changelog" / "index.html")
    assert f"[{arr_coc.__version__}]" in page and "ServerSettings" in page
