"""Lipschitz bounds of invertible networks: Table 3 of Behrmann et al. (2021), composed.

* :mod:`.table`: one function per row of Table 3 (sympy expressions, the paper's and tighter).
* :mod:`.compose`: composition over a network, Remarks 3 and 4; :func:`bound_model` for models
  built with :mod:`lipbound.blocks`, numbers certified from their weights.
* :mod:`.spec`: architectures without weights, from a JSON file.
* :mod:`.blocks`: each block type's rule (:func:`register_block`): its row with numbers from its
  weights, and the boxes carried through it forward and backward.
* :mod:`.norms`, :mod:`.layers`, :mod:`.interval`: certified operator norms, sub-network
  Lipschitz constants (:func:`register_layer`) and interval bound propagation; :mod:`.relax`,
  tighter ranges of ReLU sub-networks by linear relaxation (CROWN-style); :mod:`.registry`
  holds the rules of both by type.
* :mod:`.jacobian`, :mod:`.intervalmatrix`: the whole network's Jacobian bounded over a box
  (interval matrices through the chain rule, zonotope and centred-form boxes; Shi et al., 2022),
  forward and inverse, beside the product of per-block bounds (:class:`NetworkBound` reports the
  tighter and names it); :mod:`.zonotope`, the value ranges by affine arithmetic; :mod:`.split`,
  input splitting with a time budget (:func:`split_bounds`), whose sub-boxes :mod:`.batched`
  bounds many at a time (the same rules on a leading batch of boxes).
* :mod:`.scales`: the sups of Lemma 6 and the interval images of the affine couplings' scale
  functions, in ball arithmetic (:func:`register_scale`; float interval arithmetic on batches).
* :mod:`.rounding`, :mod:`.evaluate`: the one rounding policy (every bound rounded up, every
  lower bound down) and ball-arithmetic evaluation of the bound expressions.
* :mod:`.empirical`: the largest Jacobian norm found by sampling and gradient ascent, to hold the
  bounds against.
"""

from .blocks import BlockContext, BlockRule, register_block
from .compose import LocalBounds, NetworkBound, bound_model, local_bounds
from .interval import Box
from .layers import LayerRule, register_layer
from .scales import ScaleRule, register_scale
from .split import SplitBound, split_bounds
from .table import BlockBound, Bound

__all__ = [
    "BlockBound",
    "BlockContext",
    "BlockRule",
    "Bound",
    "Box",
    "LayerRule",
    "LocalBounds",
    "NetworkBound",
    "ScaleRule",
    "SplitBound",
    "bound_model",
    "local_bounds",
    "register_block",
    "register_layer",
    "register_scale",
    "split_bounds",
]
