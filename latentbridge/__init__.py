"""latentbridge: cross-model latent communication between frozen LLMs.

A translator reads a frozen source LLM's hidden states and emits K soft tokens that a
frozen target LLM reads as input embeddings.
"""

__version__ = "0.1.0"
