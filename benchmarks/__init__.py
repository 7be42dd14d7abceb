"""Benchmarks reproducing SIGUA (Han et al., ICML 2020): data, models and the experiment runner.

Run ``python -m benchmarks.run --help``. Not part of the installed ``sigua_optim`` package.
"""
