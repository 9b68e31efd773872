"""The application layer: the ``sam2-triton`` command line and ``demo``, on top of every package."""
