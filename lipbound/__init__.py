"""lipbound: is your invertible neural network numerically invertible, why not, what to do.

Implements "Understanding and Mitigating Exploding Inverses in Invertible Neural Networks"
(Behrmann, Vicol, Wang, Grosse, Jacobsen; AISTATS 2021). Subpackages:

* :mod:`lipbound.blocks`: invertible blocks in torch (forward, inverse, log-abs-det).
* :mod:`lipbound.diagnostics`: Jacobians and measurements on any invertible model.
"""

__version__ = "0.1.0"
