"""``python -m sam2_triton_bench`` = ``sam2-triton bench``."""

import argparse
import sys

from .cli import add_arguments, run

parser = argparse.ArgumentParser(prog="python -m sam2_triton_bench")
add_arguments(parser)
sys.exit(run(parser.parse_args()))
