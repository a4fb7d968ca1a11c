"""Looped (recurrent-depth) transformers: the reference model, training utilities
and checkpoint converters. Needs the ``looped`` extra (torch, transformers).

Importing this package registers ``model_type="looped"`` with the transformers
Auto classes, so ``AutoModelForCausalLM.from_pretrained(path)`` works.
"""

from transformers import AutoConfig, AutoModelForCausalLM

from .configuration_looped import LoopedConfig
from .graphs import GraphDecoder, GraphGeneration
from .modeling_looped import LoopedCache, LoopedCausalLMOutput, LoopedForCausalLM, LoopedModel, causal_lm_loss

AutoConfig.register("looped", LoopedConfig, exist_ok=True)
AutoModelForCausalLM.register(LoopedConfig, LoopedForCausalLM, exist_ok=True)

__all__ = ["GraphDecoder", "GraphGeneration", "LoopedCache", "LoopedCausalLMOutput", "LoopedConfig",
           "LoopedForCausalLM", "LoopedModel", "causal_lm_loss"]
