"""Prompt sets (one loader for training and evaluation, a registry of named sets) and per-rank sampling."""

from leapalign.data.prompts import PROMPT_SETS, PromptSampler, PromptSet, load_prompt_set, load_prompts

__all__ = ["PROMPT_SETS", "PromptSampler", "PromptSet", "load_prompt_set", "load_prompts"]
