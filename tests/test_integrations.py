"""sigua_optim.integrations without any framework: unwrapping wrappers, version checks at import."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util

import pytest
import torch

from sigua_optim import SIGUAOptimizer
from sigua_optim.integrations import require, sigua_optimizer


class Wrapper:
    def __init__(self, optimizer: object) -> None:
        self.optimizer = optimizer


def test_sigua_optimizer_unwraps_and_says_what_to_give() -> None:
    opt = SIGUAOptimizer(torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1))
    assert sigua_optimizer(opt) is opt
    assert sigua_optimizer(Wrapper(Wrapper(opt))) is opt
    with pytest.raises(
        TypeError, match=r"no SIGUAOptimizer inside Wrapper: give the framework SIGUAOptimizer\("
    ):
        sigua_optimizer(Wrapper(opt.optimizer))
    with pytest.raises(TypeError, match="no SIGUAOptimizer inside NoneType"):
        sigua_optimizer(None)


def test_require_names_the_version_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    versions = {"fresh": "4.46.0", "dev": "4.46.0.dev0", "local": "10.1+cpu", "old": "4.45.2"}

    def version(name: str) -> str:
        if name not in versions:
            raise importlib.metadata.PackageNotFoundError(name)
        return versions[name]

    monkeypatch.setattr(importlib.metadata, "version", version)
    for name in ("fresh", "dev", "local"):
        require(name, "4.46", "m")
    with pytest.raises(
        ImportError, match=r'm needs old>=4.46, but old 4.45.2 is installed: pip install -U "old>=4.46"'
    ):
        require("old", "4.46", "m")
    with pytest.raises(
        ImportError,
        match=r'm needs gone>=1.0, which is not installed: pip install "sigua-optim\[integrations\]"',
    ):
        require("gone", "1.0", "m")


@pytest.mark.parametrize(
    ("module", "distribution", "minimum"),
    [("transformers", "transformers", "4.57"), ("lightning", "lightning", "2.5")],
)
def test_integration_modules_check_the_version_at_import(
    monkeypatch: pytest.MonkeyPatch, module: str, distribution: str, minimum: str
) -> None:
    pytest.importorskip(module)
    integration = importlib.import_module(f"sigua_optim.integrations.{module}")
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.1")
    with pytest.raises(ImportError, match=f'pip install -U "{distribution}>={minimum}"'):
        importlib.reload(integration)
