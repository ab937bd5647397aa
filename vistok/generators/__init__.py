"""Generator families; importing this package registers their presets."""

from vistok.generators.ar import AR_PRESETS, ARGenerator
from vistok.generators.mar import MARARGenerator, MARGenerator  # registers the mar_* presets
from vistok.generators.nar import NARGenerator  # registers the nar_* presets
from vistok.generators.xar import XAR_PRESETS, XARGenerator
from vistok.registry import register_generator

for _name, _kwargs in AR_PRESETS.items():
    register_generator(_name, ARGenerator, **_kwargs)
for _name, _kwargs in XAR_PRESETS.items():
    register_generator(_name, XARGenerator, **_kwargs)

__all__ = ["ARGenerator", "NARGenerator", "XARGenerator"]
__all__ += ["MARARGenerator", "MARGenerator"]
