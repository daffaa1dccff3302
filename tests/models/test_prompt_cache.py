"""PromptCache: any tuple of per-prompt tensors, padding of variable-length prompts, a pinned encoder device."""

from __future__ import annotations

import torch

from leapalign.models import build_model
from leapalign.models.config import ModelConfig
from leapalign.models.finetune import ATTENTION_TARGETS
from leapalign.models.text import PromptCache


class VariableLength:
    """Embeds a prompt as one token per word (value = word length) with a mask of ones, batch 1."""

    def __init__(self) -> None:
        self.device = torch.device("cpu")
        self.moved_to: list[str] = []

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        (prompt,) = prompts
        words = prompt.split() or [""]
        embeds = torch.tensor([[float(len(w))] * 2 for w in words])
        return embeds[None], torch.ones(1, len(words), dtype=torch.long)

    def to(self, device: torch.device | str) -> VariableLength:
        self.moved_to.append(str(device))
        return self


def test_prompts_of_different_lengths_are_right_padded_with_a_zero_mask() -> None:
    cache = PromptCache(VariableLength())
    embeds, mask = cache.encode(["a red cat", "dog"])
    assert embeds.shape == (2, 3, 2) and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert embeds[1, 1:].abs().sum() == 0 and embeds[1, 0].tolist() == [3.0, 3.0]
    alone, alone_mask = cache.encode(["dog"])  # alone, no padding: the batch decides the padded length
    assert alone.shape == (1, 1, 2) and alone_mask.tolist() == [[1]]
    assert cache.num_encoded == 2  # each prompt encoded once
    neg, neg_mask = cache.negative(3)
    assert neg.shape == (3, 1, 2) and neg_mask.shape == (3, 1)


def test_a_pinned_encoder_stays_on_its_device_while_the_embeddings_move() -> None:
    encoder = VariableLength()
    cache = PromptCache(encoder, encoder_device="cpu")
    cache.to("meta")
    assert encoder.moved_to == ["cpu"]
    embeds, mask = cache.encode(["a cat"])
    assert embeds.device.type == "meta" and mask.device.type == "meta"


def test_build_model_keeps_the_text_encoder_where_model_text_encoder_device_says() -> None:
    model = build_model(ModelConfig(name="tiny-flux", max_sequence_length=8, text_encoder_device="cpu"), "meta")
    assert model.prompt_cache.encoder_device == "cpu"
    assert next(model.text_encoder.t5.parameters()).device.type == "cpu"
    assert model.vae is not None and next(model.vae.parameters()).device.type == "meta"


def test_lora_targets_null_takes_the_adapters_default_targets() -> None:
    model = build_model(ModelConfig(name="tiny-flux", max_sequence_length=8, lora_rank=2))
    adapted = {n.rsplit(".", 1)[-1] for n, _ in model.transformer.named_modules() if n.endswith(ATTENTION_TARGETS[:3])}
    assert adapted == {"to_q", "to_k", "to_v"}
    lora = [n for n, p in model.transformer.named_parameters() if p.requires_grad]
    assert lora and all("lora_" in n for n in lora)
    assert any(".to_out.0.lora_A" in n for n in lora)
    assert model.transformer.peft_config["default"].target_modules == set(ATTENTION_TARGETS)
