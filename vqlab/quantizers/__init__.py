"""Quantizers: pure functions on arrays plus thin `nnx.Module` wrappers.

Every module maps z (..., dim) to a `QuantizerOutput` (quantized, indices, loss,
metrics) and has `decode(indices)`.
"""

from vqlab.quantizers.bsq import BSQ
from vqlab.quantizers.core import QuantizerOutput, QuantizerState
from vqlab.quantizers.fsq import FSQ
from vqlab.quantizers.lfq import LFQ
from vqlab.quantizers.multiscale import MultiScaleVQ
from vqlab.quantizers.residual import (GroupedQuantizer, GroupedResidualVQ, GroupedVQ,
                                       ResidualFSQ, ResidualQuantizer, ResidualVQ)
from vqlab.quantizers.search import nearest_code, nearest_code_naive
from vqlab.quantizers.vq import VectorQuantizer

__all__ = [
    "BSQ", "FSQ", "GroupedQuantizer", "GroupedResidualVQ", "GroupedVQ", "LFQ",
    "MultiScaleVQ", "QuantizerOutput", "QuantizerState", "ResidualFSQ",
    "ResidualQuantizer", "ResidualVQ", "VectorQuantizer", "nearest_code",
    "nearest_code_naive",
]
