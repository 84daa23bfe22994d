"""The performance harness: ``tritonconv bench``.

    ===============  ==========================================================
    module           role
    ===============  ==========================================================
    presets.py       every distinct conv of real networks (N left open)
    providers.py     what is timed: tritonconv, cuDNN, Inductor, im2col, unfold
    precompile.py    compile the autotune candidates in parallel first
    sweep.py         the sweep: timing, memory, CSV rows; ``tritonconv tune``
    report.py        markdown and plot, rendered from the CSV
    ===============  ==========================================================

``perf/README.md`` says how to run it and how to read the results. Nothing
here runs on import.
"""

from __future__ import annotations

from typing import Optional, Sequence

__all__ = ["main"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``tritonconv bench [options]``; ``tritonconv bench --help`` lists them."""
    from .sweep import main as sweep_main

    return sweep_main(argv)
