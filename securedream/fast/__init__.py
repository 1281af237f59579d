"""CoDream-fast (``method = "codream-fast"``): dreams are G(z) of a small generator.

Clients optimise the generator's weights and the latents collaboratively (local Adam steps, the
server averages the changes through the run's aggregator), and a Reptile meta-step carries a
generator initialisation across rounds, so each round needs few aggregations. See
docs/algorithm.md, section "CoDream-fast".
"""

from securedream.fast.generator import DreamGenerator, build_generator
from securedream.fast.meta import MetaGenerator
from securedream.fast.support import unsupported

__all__ = ["DreamGenerator", "MetaGenerator", "build_generator", "unsupported"]
