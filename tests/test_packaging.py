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
