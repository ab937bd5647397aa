"""Decoders: free functions over the protocols of :mod:`vistok.interfaces`, selected by name in :func:`generate`
(usage: :mod:`vistok.decoding.api`)."""

from vistok.decoding.api import DECODERS, GenerationOutput, generate, parse_options
from vistok.decoding.autoregressive import decode_ar
from vistok.decoding.budget import TokenBudget
from vistok.decoding.cells import decode_cells
from vistok.decoding.continuous import decode_car, decode_csd
from vistok.decoding.grouped import decode_gsd, decode_lantern
from vistok.decoding.guidance import Guidance
from vistok.decoding.jacobi import decode_mcsjd, decode_sjd
from vistok.decoding.masked import decode_masked
from vistok.decoding.neighboring import decode_nar
from vistok.decoding.parallel import decode_pjd
from vistok.decoding.prefix import ForcedPrefix
from vistok.decoding.sampling import SamplingArgs, sample_probs

__all__ = ["DECODERS", "ForcedPrefix", "GenerationOutput", "Guidance", "SamplingArgs", "TokenBudget", "decode_ar",
           "decode_car", "decode_cells", "decode_csd", "decode_gsd", "decode_lantern", "decode_masked", "decode_mcsjd",
           "decode_nar", "decode_pjd", "decode_sjd", "generate", "parse_options", "sample_probs"]
