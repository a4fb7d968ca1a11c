"""Model backends (scripted, litellm, transformers, vLLM) behind one protocol.

Filled in by the controller and model issues; see ../shared/DESIGN.md.
"""
