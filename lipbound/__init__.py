"""lipbound: is your invertible neural network numerically invertible, why not, what to do.

Implements "Understanding and Mitigating Exploding Inverses in Invertible Neural Networks"
(Behrmann, Vicol, Wang, Grosse, Jacobsen; AISTATS 2021). Subpackages:

* :mod:`lipbound.blocks`: invertible blocks in torch (forward, inverse, log-abs-det).
* :mod:`lipbound.bounds`: Table 3 Lipschitz bounds, composed, with certified numbers from weights.
* :mod:`lipbound.precision`: precision names, runs at any precision, the section 2 error
  decomposition against the arbitrary-precision oracle (the top-level package ``reference``).
* :mod:`lipbound.diagnostics`: Jacobian spectra, reconstruction statistics, invertibility attack.
* :mod:`lipbound.adapters`: FrEIA, nflows, zuko, normflows and memcnn models as lipbound blocks.
* :mod:`lipbound.training`: memory-saving gradients that check their own reconstruction, gradient
  agreement, the FD and NF regularizers, the stability monitor, trainers and presets
  (``lipbound train``).

The ``lipbound`` command (:mod:`lipbound.cli`, also ``python -m lipbound``) runs them on saved
models (:mod:`lipbound.io`); ``lipbound example NAME`` (:mod:`lipbound.example`) writes a model and
inputs to start from.
"""

__version__ = "0.1.0"
