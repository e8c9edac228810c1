"""SMASH (Brock et al., *SMASH: One-Shot Model Architecture Search through
HyperNetworks*, ICLR 2018): a HyperNet generates the 1x1 convolutions of a
memory-bank network from an encoding of its architecture.

* ``space``: the memory-bank search space (``MemoryBankSpace``, with the
  paper's ``smash_v1`` and ``smash_v2``): architectures as data, sampling with
  a per-block budget, validation, SMASH's perturbation, and the encoding
  tensor c of appendix B;
* ``models``: the resulting network (every weight free, BN-ReLU-Conv);
* ``network``: the SMASH network, every architecture padded and masked in
  one trace (memory tensor, generated 1x1s, learned slot convolutions);
* ``hypernet``: the HyperNet (a 26-layer DenseNet over c, simplified
  WeightNorm) and the channel-based weight compression that turns its output
  into every op's 1x1 kernel.

Not registered as a method yet: the proxy (training a fresh architecture a
step, scoring), settings and presets come next (issue 14).
"""
