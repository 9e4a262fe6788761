"""Class-conditional generation of adaptive-length tokens: vocabulary, grammar and sampling.

The modules import nothing from this package's ``__init__``, because ``evatok.models.generator``
imports ``evatok.generation.vocab`` and an eager import here would make that import circular.
"""
