"""Prompt sources."""

from leapalign.data.prompts import BUILTIN_PROMPTS, PromptSampler, load_prompts

__all__ = ["BUILTIN_PROMPTS", "PromptSampler", "load_prompts"]
