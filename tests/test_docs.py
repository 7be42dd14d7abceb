"""The documentation site: every code block of every page runs, every public name is documented.

- Each fenced block of ``docs/**/*.md`` is classified by its language. ``python`` blocks run, in
  order, in one namespace per page, in a temporary directory. Shell blocks (``bash``, ``sh``) are
  install, build or experiment commands (minutes to hours, packages from the network), not run
  here. A python block that cannot run here is preceded by ``<!-- docs-test: skip: REASON -->``,
  and the reason must be given. docs/integrations.md's blocks run in
  tests/test_integrations_docs.py, which also checks what each recipe did.
- Every name in a public module's ``__all__``, and every public method or property a public class
  defines, has a docstring (the API reference is generated from them by mkdocstrings).
- ``docs/figures.py`` (the concepts figure) runs; the site renders math, roles and doctests.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import itertools
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from sigua_optim import SIGUAOptimizer
from sigua_optim.conditions import BandSelected

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*.md"))
SHELL = {"bash", "sh"}
RUN_ELSEWHERE = {"integrations.md": "tests/test_integrations_docs.py"}
BLOCK = re.compile(
    r"(?:<!-- docs-test: skip:(?P<reason>[^>]*)-->\n)?^```(?P<lang>[\w-]*)\n(?P<code>.*?)^```", re.S | re.M
)
PUBLIC_MODULES = [
    "sigua_optim",
    "sigua_optim.conditions",
    "sigua_optim.functional",
    "sigua_optim.losses",
    "sigua_optim.noise",
    "sigua_optim.estimation",
    "sigua_optim.reference",
    "sigua_optim.testing",
    "sigua_optim.integrations",
    "sigua_optim.integrations.transformers",
    "sigua_optim.integrations.lightning",
]
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def blocks(page: str) -> list[re.Match[str]]:
    return list(BLOCK.finditer((DOCS / page).read_text()))


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("page", PAGES)
def test_every_block_is_classified(page: str) -> None:
    for block in blocks(page):
        lang, reason = block["lang"], block["reason"]
        assert lang == "python" or lang in SHELL, f"{page}: a ```{lang} block: neither python nor shell"
        assert reason is None or reason.strip(), f"{page}: a skip marker without a reason"


def test_a_skip_marker_holds_its_block_and_reason() -> None:
    text = "```python\nrun()\n```\n<!-- docs-test: skip: needs a CUDA GPU -->\n```python\ngpu()\n```\n"
    found = [(block["code"], block["reason"]) for block in BLOCK.finditer(text)]
    assert found == [("run()\n", None), ("gpu()\n", " needs a CUDA GPU ")]


@pytest.mark.parametrize("page", [p for p in PAGES if p not in RUN_ELSEWHERE])
def test_python_blocks_run(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "docs"}
    for number, block in enumerate(blocks(page)):
        if block["lang"] == "python" and block["reason"] is None:
            exec(compile(block["code"], f"docs/{page}, python block {number}", "exec"), namespace)


def test_pages_run_elsewhere_are_run_there() -> None:
    for page, test in RUN_ELSEWHERE.items():
        assert f'"docs" / "{page}"' in (ROOT / test).read_text(), f"{test} does not read docs/{page}"


def test_every_page_is_in_the_site_navigation() -> None:
    config = (ROOT / "mkdocs.yml").read_text()
    assert not [page for page in PAGES if f": {page}\n" not in config]


ITEM = re.compile(r"(?:[-*]|\d+\.) \S")


def list_layout_errors(text: str) -> list[str]:
    """Where the site's Markdown (Python-Markdown, unlike GitHub's) would not draw a list: an item
    right below a paragraph line, or below a paragraph that an item holds after a blank line (it
    needs a blank line first), or a nested item indented by 2 (it needs 4). Fenced code is left
    out."""
    errors, previous, fenced, held = [], "", False, False
    for number, line in enumerate(text.split("\n"), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            paragraph = previous and not (previous.startswith((" ", "#", "|", "```")) or ITEM.match(previous))
            if ITEM.match(line) and (held or paragraph):
                errors.append(f"line {number}: a list right below a paragraph: add a blank line")
            if line.startswith("  ") and ITEM.match(line[2:]):
                errors.append(f"line {number}: a nested item indented by 2: indent it by 4")
            # within an item's paragraph that began after a blank line
            held = line.startswith(" ") and not ITEM.match(line.lstrip()) and (held or not previous)
        previous = line
    return errors


def test_list_layout_errors_finds_both_mistakes() -> None:
    assert list_layout_errors("Text:\n- a\n  - b\n- c\n\n  more of c\n- d\n") == [
        "line 2: a list right below a paragraph: add a blank line",
        "line 3: a nested item indented by 2: indent it by 4",
        "line 7: a list right below a paragraph: add a blank line",
    ]
    assert list_layout_errors("Text:\n\n- a\n  more of a\n    - b\n- c\n```sh\nx\n  - y\n```\n") == []


@pytest.mark.parametrize("page", PAGES)
def test_lists_render_on_the_site(page: str) -> None:
    assert not list_layout_errors((DOCS / page).read_text()), f"docs/{page}"


def _data_docstrings(module: ModuleType) -> set[str]:
    """Module-level names assigned and followed by a string literal (an attribute docstring)."""
    body = ast.parse(inspect.getsource(module)).body
    documented = set()
    for statement, following in itertools.pairwise(body):
        targets = statement.targets if isinstance(statement, ast.Assign) else []
        if isinstance(statement, ast.AnnAssign):
            targets = [statement.target]
        if isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
            documented |= {target.id for target in targets if isinstance(target, ast.Name)}
    return documented


def _undocumented(module: ModuleType) -> list[str]:
    missing = []
    data = _data_docstrings(module)
    for name in module.__all__:
        value = getattr(module, name)
        if not (inspect.isclass(value) or inspect.isroutine(value) or inspect.ismodule(value)):
            missing += [] if name in data else [name]
            continue
        missing += [] if (value.__doc__ or "").strip() else [name]
        for member, attribute in vars(value).items() if inspect.isclass(value) else ():
            function = attribute.fget if isinstance(attribute, property) else attribute
            if member.startswith("_") or not (inspect.isroutine(function) or isinstance(attribute, property)):
                continue
            missing += [] if (getattr(function, "__doc__", None) or "").strip() else [f"{name}.{member}"]
    return missing


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_every_public_name_has_a_docstring(name: str) -> None:
    framework = name.rsplit(".", 1)[-1]
    if name.startswith("sigua_optim.integrations.") and importlib.util.find_spec(framework) is None:
        pytest.skip(f"{framework} is not installed (the integrations extra)")
    module = importlib.import_module(name)
    assert (module.__doc__ or "").strip(), f"{name} has no module docstring"
    assert _undocumented(module) == [], f"{name}: public names without a docstring"


def test_every_public_module_has_an_api_page() -> None:
    pages = "".join(path.read_text() for path in (DOCS / "api").glob("*.md"))
    assert [name for name in PUBLIC_MODULES if f"::: {name}\n" not in pages] == []


def test_figure_script_draws_the_bands(tmp_path: Path) -> None:
    figures = load(DOCS / "figures.py")
    figures.main(["--out", str(tmp_path / "bands.png")])
    assert (tmp_path / "bands.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (DOCS / "img" / "bands.png").exists()  # the committed figure the concepts page shows


def test_doctest_examples_are_fenced_for_the_site() -> None:
    pytest.importorskip("griffe")  # the docs extra
    fence = load(DOCS / "griffe_doctests.py").fence
    text = "Example:\n    >>> f(\n    ...   1)\n    2\n\n    After."
    assert fence(text) == "Example:\n    ```pycon\n    >>> f(\n    ...   1)\n    2\n    ```\n\n    After."


def test_hook_renders_roles() -> None:
    pytest.importorskip("latex2mathml")  # the docs extra
    hooks = load(DOCS / "hooks.py")
    html = hooks.on_page_content(
        "<p>:math:<code>\\rho(t)</code> of :class:<code>~sigua_optim.SIGUAOptimizer</code>, "
        ":meth:<code>set &lt;sigua_optim.SIGUAOptimizer.set_epoch&gt;</code></p>\n<p>.. math::\n    a + b</p>"
    )
    mathml = '<math xmlns="http://www.w3.org/1998/Math/MathML" display='
    assert mathml + '"inline"><mrow><mi>&#x003C1;</mi>' in html
    assert '<autoref identifier="sigua_optim.SIGUAOptimizer" optional><code>SIGUAOptimizer</code>' in html
    assert '<autoref identifier="sigua_optim.SIGUAOptimizer.set_epoch" optional><code>set</code>' in html
    assert mathml + '"block"><mrow><mi>a</mi><mo>&#x0002B;</mo>' in html


def prose(page: str) -> str:
    """A page without its fenced code blocks: what a reader reads as sentences."""
    return re.sub(r"^```.*?^```", "", (DOCS / page).read_text(), flags=re.S | re.M)


def test_the_torch_the_docs_require_is_the_one_pyproject_requires() -> None:
    bound = re.search(r'"torch>=([\d.]+)"', (ROOT / "pyproject.toml").read_text())
    assert bound is not None, "pyproject.toml names no torch>= bound"
    stated = {page: re.findall(r"torch\s*(?:≥|>=)\s*([\d.]+\d)", prose(page)) for page in PAGES}
    assert stated["index.md"], "the home page does not state the torch it needs"
    assert {page: found for page, found in stated.items() if set(found) - {bound[1]}} == {}


# What docs call each field of state_dict()["sigua"] (\u03b3: gamma), and of its "condition" record.
CHECKPOINT_WORDS = {
    "gamma": "\u03b3",
    "epoch": "the epoch",
    "reduction": "the reduction",
    "condition": "the condition",
}
CONDITION_WORDS = {"type": "type", "hyperparameters": "hyperparameters", "state": "state"}


def test_the_checkpoint_fields_the_docs_name_are_those_state_dict_writes() -> None:
    base = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    fields = SIGUAOptimizer(base, BandSelected(noise_rate=0.2, band=0.1)).state_dict()["sigua"]
    assert set(fields) == set(CHECKPOINT_WORDS) and set(fields["condition"]) == set(CONDITION_WORDS)
    words = [*CHECKPOINT_WORDS.values(), *CONDITION_WORDS.values()]
    for page in ["quickstart.md", "faq.md"]:
        paragraph = " ".join(next(p for p in prose(page).split("\n\n") if '`"sigua"`' in p).split())
        missing = [word for word in words if word not in paragraph]
        assert missing == [], f"docs/{page} describes the checkpoint without {missing}"
    for page in PAGES:
        assert "not in the checkpoint" not in prose(page), f"docs/{page}: the condition's settings are saved"


HISTORY = re.compile(
    r"\b(this wave|the wave|this session|these sessions|earlier run|previous run|round|was lent|not rerun)\b",
    re.I,
)


@pytest.mark.parametrize("page", PAGES)
def test_no_page_speaks_of_the_projects_history(page: str) -> None:
    assert HISTORY.findall(prose(page)) == [], f"docs/{page}: project history belongs in CHANGELOG.md"


def test_history_words_are_found() -> None:
    found = HISTORY.findall("Round 2 of this wave, an earlier run (not rerun; no GPU was lent)")
    assert found == ["Round", "this wave", "earlier run", "not rerun", "was lent"]


def test_the_decision_guide_is_linked_from_home_quickstart_and_conditions() -> None:
    for page in ["index.md", "quickstart.md", "conditions.md"]:
        assert "](which-condition.md" in prose(page), f"docs/{page} does not link Which condition?"
