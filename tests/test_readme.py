"""The README's quickstart runs as written, and CI runs the README's test command verbatim."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_quickstart_runs_as_written() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks, "the README has no python block"
    namespace: dict[str, object] = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    result: Any = namespace["result"]
    assert result.good.dtype == torch.bool and result.bad.dtype == torch.bool
    # After the warm-up (epoch 11 > T_k = 10) rho = 0.5: Eq. 5 keeps floor(n rho) + 1 samples and
    # Eq. 6 marks floor(n rho + n delta) + 1 minus those as bad (continuous losses: no ties).
    n = result.good.numel()
    assert int(result.good.sum()) == math.floor(n * 0.5) + 1
    assert int(result.bad.sum()) == math.floor(n * 0.5 + n * 0.15) + 1 - (math.floor(n * 0.5) + 1)


def test_ci_runs_the_readme_test_command() -> None:
    commands = re.findall(r"```bash\n(.*?)\n```", README, flags=re.S)
    test_command = next(c for c in commands if "pytest" in c)
    assert "\n" not in test_command and "-c constraints.txt" in test_command
    assert test_command in (ROOT / ".ci" / "run").read_text()
