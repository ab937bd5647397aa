"""Generator families; importing this package registers their presets."""

from vistok.generators.ar import AR_PRESETS, ARGenerator
from vistok.generators.mar import MAR_AR_PRESETS, MAR_PRESETS, MARARGenerator, MARGenerator
from vistok.generators.nar import NAR_PRESETS, NARGenerator
from vistok.generators.xar import XAR_PRESETS, XARGenerator
from vistok.registry import register_generator

for _presets, _cls in ((AR_PRESETS, ARGenerator), (NAR_PRESETS, NARGenerator), (MAR_PRESETS, MARGenerator),
                       (MAR_AR_PRESETS, MARARGenerator), (XAR_PRESETS, XARGenerator)):
    for _name, _kwargs in _presets.items():
        register_generator(_name, _cls, **_kwargs)

__all__ = ["ARGenerator", "MARARGenerator", "MARGenerator", "NARGenerator", "XARGenerator"]
