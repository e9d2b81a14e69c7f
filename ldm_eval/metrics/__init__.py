"""Metrics: how good a set of images is, measured against real ones.

Inception and domain-classifier features (``features``), the Fréchet distance and KID maths
(``frechet``), FID with bootstrap intervals and FID-infinity (``uncertainty``, ``fid``), the shared
reference-feature cache (``cache``, ``reference_cache``), the Inception network under ONNX Runtime
(``inception_onnx``), the domain classifier (``domain_classifier``), recognisability by a real-data
judge (``recognisability``) and reconstruction quality of a first stage (``reconstruction``).

May import: ``pipelines`` only.
"""
