"""jaxchat: a full-stack "build your own ChatGPT" in JAX/Flax (a reimplementation of nanochat V1)."""

__version__ = "0.1.0"
