"""Relative entropy coder: a Gaussian block's posterior sample sent as a candidate index.

The coder stands alone (it knows nothing about networks): :func:`encode` turns blocks of
``q = N(mu, diag sigma**2)`` and ``p = N(0, diag s**2)`` into indices of ``bits`` bits, and
:func:`decode` turns the indices back into exactly the same float32 samples, in any process
and with any number of threads. The shared randomness is specified in
docs/shared_randomness.md and versioned by :data:`CANDIDATE_GENERATOR_VERSION`.

Example::

    import torch
    from miracle.coder import encode, decode, kl_bits

    mu = torch.zeros(3, 8); sigma = torch.full((3, 8), 0.5); s = torch.ones(3, 8)
    indices, samples = encode(mu, sigma, s, bits=12, seed=1234)
    assert torch.equal(decode(s, indices, bits=12, seed=1234), samples)
"""

from miracle.coder.candidates import CANDIDATE_GENERATOR_VERSION, clear_caches
from miracle.coder.coder import DEFAULT_BANK_CACHE_BYTES, RULES, decode, encode, kl_bits

__all__ = [
    "CANDIDATE_GENERATOR_VERSION",
    "DEFAULT_BANK_CACHE_BYTES",
    "RULES",
    "clear_caches",
    "decode",
    "encode",
    "kl_bits",
]
