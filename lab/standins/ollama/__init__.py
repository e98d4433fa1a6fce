"""LAB STAND-IN for Ollama (https://ollama.com), not the real thing.

Why: the lab has no internet, so neither the real release tarball nor model
weights can be fetched. This package answers Ollama's HTTP API with the real
shapes (what LiteLLM's ``ollama_chat/`` provider and our facts use), "pulls"
fake models from ``catalogue.json`` (manifests only, no weights), keeps the
real scheduling rules (keep_alive, OLLAMA_MAX_LOADED_MODELS, evict-then-load)
and is packaged like the official ``ollama-linux-amd64.tar.zst`` by ``build``.

Stdlib only: the same files run from this repository and, copied by
``build.py``, from ``lib/ollama/standin/`` inside the release tarball.
"""
