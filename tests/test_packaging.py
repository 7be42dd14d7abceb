"""What a user installing the package meets: the optional test helpers' hint, the licence, the metadata."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_testing_without_hypothesis_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "hypothesis", None)  # an import of it now raises ImportError
    monkeypatch.delitem(sys.modules, "sigua_optim.testing", raising=False)
    with pytest.raises(ImportError, match=r"sigua_optim\.testing needs hypothesis: pip install"):
        importlib.import_module("sigua_optim.testing")


def test_the_licence_the_metadata_names_is_shipped() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'license = "MIT"' in pyproject and 'license-files = ["LICENSE"]' in pyproject
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


def test_the_changelog_has_this_version() -> None:
    from sigua_optim import __version__

    assert f"## [{__version__}]" in (ROOT / "CHANGELOG.md").read_text()
