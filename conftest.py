"""pytest: leave out the doctests of a framework integration whose framework is not installed.

Importing ``sigua_optim.integrations.<framework>`` without the framework raises ImportError (by
design, naming what to install); its tests skip through ``pytest.importorskip``.
"""

import importlib.util

collect_ignore = [
    f"sigua_optim/integrations/{framework}.py"
    for framework in ("transformers", "lightning")
    if importlib.util.find_spec(framework) is None
]
