"""tritonconv: 2-D convolution as fused, autotuned implicit-GEMM Triton kernels.

Importing tritonconv registers ``torch.ops.tritonconv.conv2d``. CPU tensors run
through Triton's interpreter when ``TRITON_INTERPRET=1`` is set before import.
"""

from . import ops  # noqa: F401  (registers torch.ops.tritonconv.*)
from . import nn, reference
from .functional import conv2d, conv_transpose2d
from .nn import convert
from .kernels._common import INTERPRETER

__version__ = "0.1.0"

__all__ = ["conv2d", "conv_transpose2d", "nn", "convert", "reference", "INTERPRETER", "__version__"]
