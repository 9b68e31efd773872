"""``sam2-triton bench``: what serving SAM 2.1 on Triton costs and what it wins, side by side.

Run ``sam2-triton bench`` (or ``python -m sam2_triton_bench``); see ``docs/benchmarks.md``.
"""
