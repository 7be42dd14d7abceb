"""sigua_optim: SIGUA (Han et al., ICML 2020) for PyTorch.

Gradient descent on good data and learning-rate-reduced gradient ascent on bad data, inside each
mini-batch, as a drop-in wrapper of any ``torch.optim`` optimizer.
"""

from .conditions import Selection
from .optimizer import SIGUAOptimizer, StepResult

__all__ = ["SIGUAOptimizer", "Selection", "StepResult"]
__version__ = "0.1.0"
