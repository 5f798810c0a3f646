"""Benchmarks run by `leadflow bench TARGET`; each module has `main(settings, argv) -> int`.

Every benchmark prints its figures next to a ceiling measured in the same run, so numbers
from different machines can be compared by their ratio.
"""
