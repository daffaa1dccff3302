"""The model-based rewards on tiny random-init models saved in the official formats: scores equal to the official
(non-differentiable) computation, gradients reaching the images, and errors that say what to install or download."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _tiny_clip import make_clip_tokenizer
from PIL import Image
from transformers import CLIPImageProcessor, CLIPModel

from leapalign.rewards import RewardTermConfig, build_reward_term
from leapalign.rewards.aesthetic import AestheticHead, LaionAesthetic
from leapalign.rewards.clip_score import ClipScore
from leapalign.rewards.hpsv2 import HPSv2
from leapalign.rewards.image_reward import ImageReward
from leapalign.rewards.pickscore import PickScore
from leapalign.rewards.preprocess import OPENAI_CLIP, OPENAI_MEAN, OPENAI_STD, preprocess
from leapalign.rewards.weights import REWARD_DIR_ENV

PROMPTS = ["a red circle", "a photo of a cat"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch) -> None:
    """No network here: make hub look-ups fail at once instead of retrying."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def photo_batch(size: tuple[int, int] = (56, 40)) -> tuple[torch.Tensor, list[Image.Image]]:
    """Two real photos as 8-bit PIL images and as a float batch ``(2, 3, H, W)`` in [0, 1]."""
    data = pytest.importorskip("skimage.data")
    pils = [Image.fromarray(data.astronaut()).resize(size), Image.fromarray(data.coffee()).resize(size)]
    arr = np.stack([np.asarray(p) for p in pils])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(255), pils


def official_clip_embeds(model: CLIPModel, pixels: torch.Tensor, ids: torch.Tensor) -> tuple:
    img = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
    txt = model.text_projection(model.text_model(input_ids=ids).pooler_output)
    return F.normalize(img, dim=-1), F.normalize(txt, dim=-1)


def check_gradients(reward, images: torch.Tensor) -> None:
    images = images.clone().requires_grad_(True)
    reward(images, PROMPTS).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0 and torch.isfinite(images.grad).all()


def test_pickscore_and_clip_score_match_the_official_path(clip_dir: Path) -> None:
    images, pils = photo_batch()
    model = CLIPModel.from_pretrained(clip_dir).eval()
    processor = CLIPImageProcessor.from_pretrained(clip_dir)
    tok = make_clip_tokenizer()
    with torch.no_grad():  # the official PickScore computation, on PIL images through the image processor
        pixels = processor(images=pils, return_tensors="pt")["pixel_values"]
        ids = tok(PROMPTS, padding=True, truncation=True, max_length=16, return_tensors="pt")["input_ids"]
        img, txt = official_clip_embeds(model, pixels, ids)
        cos = (img * txt).sum(-1)
        pick = PickScore(model=str(clip_dir), processor=str(clip_dir))
        clip = ClipScore(model=str(clip_dir), scale=2.5)
        torch.testing.assert_close(pick(images, PROMPTS), model.logit_scale.exp() * cos, atol=1e-4, rtol=0)
        torch.testing.assert_close(clip(images, PROMPTS), 2.5 * cos, atol=1e-5, rtol=0)
        assert clip.spec.size == 32 and clip.spec.crop_rounding == "floor"
    check_gradients(pick, images)
    check_gradients(clip, images)


def test_hpsv2_matches_the_reference_model(hps_checkpoint, tokenizer_dir: Path) -> None:
    path, ref = hps_checkpoint
    images, _ = photo_batch((48, 36))
    tok = make_clip_tokenizer()
    reward = HPSv2(checkpoint=str(path), tokenizer=str(tokenizer_dir), vision_heads=3, text_heads=2)
    with torch.no_grad():  # HPSv2's transform: longer side to 32, zero padding, OpenAI normalisation
        x = F.interpolate(images, size=(24, 32), mode="bicubic", align_corners=False, antialias=True)  # 36x48 in
        x = F.pad(x, (0, 0, 4, 4))
        x = (x - torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)) / torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
        ids = tok(PROMPTS, padding="max_length", max_length=16, return_tensors="pt")["input_ids"]
        for row in ids:  # OpenCLIP pads with 0 after the end-of-text token
            row[int((row == tok.eos_token_id).nonzero()[0]) + 1 :] = 0
        expected = (ref.encode_image(x) * ref.encode_text(ids)).sum(-1)
        torch.testing.assert_close(reward(images, PROMPTS), expected, atol=2e-5, rtol=0)
    check_gradients(reward, images)


def test_hpsv2_found_in_the_reward_folder(hps_checkpoint, tokenizer_dir: Path, tmp_path: Path, monkeypatch) -> None:
    path, _ = hps_checkpoint
    (tmp_path / "HPS_v2.1_compressed.pt").symlink_to(path)
    monkeypatch.setenv(REWARD_DIR_ENV, str(tmp_path))
    term = RewardTermConfig("hpsv2", args={"tokenizer": str(tokenizer_dir), "vision_heads": 3, "text_heads": 2})
    reward = build_reward_term(term)
    assert reward(torch.rand(2, 3, 32, 32), PROMPTS).shape == (2,)


def test_aesthetic_matches_the_official_path(clip_dir: Path, tmp_path: Path) -> None:
    images, pils = photo_batch()
    torch.manual_seed(0)
    head = AestheticHead(input_size=16).eval()
    torch.save(head.state_dict(), tmp_path / "sac+logos+ava1-l14-linearMSE.pth")  # the official file format
    reward = LaionAesthetic(head=str(tmp_path), clip_model=str(clip_dir))
    model = CLIPModel.from_pretrained(clip_dir).eval()
    with torch.no_grad():  # clip.load preprocess (torchvision on PIL: resize 32 bicubic, centre crop, normalise)
        crops = []
        for pil in pils:
            w, h = pil.size
            r = pil.resize((32, int(32 * h / w)) if w <= h else (int(32 * w / h), 32), Image.BICUBIC)
            top, left = int(round((r.height - 32) / 2.0)), int(round((r.width - 32) / 2.0))
            crops.append(np.asarray(r.crop((left, top, left + 32, top + 32))))
        x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div(255)
        x = (x - torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)) / torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
        emb = model.visual_projection(model.vision_model(pixel_values=x).pooler_output)
        official = torch.nn.Sequential(*[m for m in head.layers])  # the predictor's nn.Sequential
        expected = official(emb / emb.norm(dim=-1, keepdim=True)).squeeze(-1)
        torch.testing.assert_close(reward(images, PROMPTS), expected, atol=1e-5, rtol=0)
    check_gradients(reward, images)
    torch.save({"layers.0.weight": torch.zeros(3, 3)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="does not fit"):
        LaionAesthetic(head=str(tmp_path / "bad.pth"), clip_model=str(clip_dir))(images, PROMPTS)


class _StubTokenizer:
    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, prompts, **kwargs):
        self.calls.append(kwargs)
        ids = torch.tensor([[101] + [len(p)] * (kwargs["max_length"] - 1) for p in prompts])
        return types.SimpleNamespace(input_ids=ids, attention_mask=torch.ones_like(ids))


class _StubImageReward(torch.nn.Module):
    """The package's model interface: ``blip.tokenizer``, ``device``, ``score_gard(ids, mask, image)``."""

    def __init__(self) -> None:
        super().__init__()
        self.blip = torch.nn.Module()
        self.blip.tokenizer = _StubTokenizer()
        self.proj = torch.nn.Linear(3, 1)
        self.device = "cpu"
        self.seen: list[torch.Tensor] = []

    def score_gard(self, prompt_ids, prompt_attention_mask, image):
        self.seen.append(image.detach())
        return self.proj(image.mean(dim=(2, 3))) + prompt_ids[:, 1:2].float() / 100


def test_image_reward_uses_the_package_differentiably(monkeypatch, tmp_path: Path) -> None:
    stub = _StubImageReward()
    calls: list[tuple] = []

    def load(name, device="cpu", download_root=None, med_config=None):
        calls.append((name, device, download_root, med_config))
        return stub

    monkeypatch.setitem(sys.modules, "ImageReward", types.SimpleNamespace(load=load))
    images, _ = photo_batch()
    weights, med = tmp_path / "ImageReward.pt", tmp_path / "med_config.json"
    weights.write_bytes(b"")
    med.write_text("{}")
    reward = ImageReward(model=str(weights), med_config=str(med))
    scores = reward(images, PROMPTS)
    assert scores.shape == (2,) and calls == [(str(weights), "cpu", None, str(med))]
    assert stub.blip.tokenizer.calls[0] == dict(
        padding="max_length", truncation=True, max_length=35, return_tensors="pt"
    )
    torch.testing.assert_close(stub.seen[0], preprocess(images, OPENAI_CLIP))
    assert stub.seen[0].shape == (2, 3, 224, 224)
    check_gradients(reward, images)


def test_missing_packages_and_files_say_what_to_do(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ImageReward", None)  # makes the import fail
    images = torch.rand(2, 3, 32, 32)
    with pytest.raises(ImportError, match="pip install image-reward"):
        build_reward_term(RewardTermConfig("image_reward"))(images, PROMPTS)
    # the hint is an override that `leapalign train` accepts, not the rejected `hpsv2.checkpoint=...`
    with pytest.raises(
        FileNotFoundError, match=r"nope\.pt does not exist.*reward\.terms=\[\{name: hpsv2, args: \{checkpoint: "
    ):
        HPSv2(checkpoint=str(tmp_path / "nope.pt"))  # fails at construction, before any model is built
    with pytest.raises(
        FileNotFoundError, match=r"has no HPS_v2\.1_compressed\.pt.*\{name: hpsv2, args: \{checkpoint: "
    ):
        HPSv2(checkpoint=str(tmp_path))(images, PROMPTS)
    monkeypatch.delenv(REWARD_DIR_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match=rf"xswu/HPSv2.*\${REWARD_DIR_ENV}/HPS_v2_compressed\.pt"):
        HPSv2(version="v2.0")(images, PROMPTS)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        PickScore(model=str(tmp_path / "PickScore_v1"))(images, PROMPTS)
    with pytest.raises(FileNotFoundError, match="hf download yuvalkirstain/PickScore_v1"):
        PickScore()(images, PROMPTS)
    with pytest.raises(FileNotFoundError, match="improved-aesthetic-predictor"):
        LaionAesthetic()(images, PROMPTS)
    with pytest.raises(ValueError, match="not supported"):
        build_reward_term(RewardTermConfig("hpsv3"))
    with pytest.raises(ValueError, match="version"):
        HPSv2(version="v3")


def test_rewards_are_lazy_and_frozen(clip_dir: Path) -> None:
    reward = build_reward_term(RewardTermConfig("clip_score", args={"model": str(clip_dir)}))
    assert not reward._loaded  # nothing read before the first call
    reward(torch.rand(2, 3, 32, 32), PROMPTS)
    params = list(reward.scorer.model.parameters())
    assert reward._loaded and not any(p.requires_grad for p in params) and not reward.scorer.model.training
    assert reward.embed(torch.rand(3, 3, 40, 40)).shape == (3, 16)


def test_rewards_command_lists_what_each_needs(capsys) -> None:
    from leapalign.cli import main

    assert main(["rewards"]) == 0
    out = capsys.readouterr().out
    for needle in ("HPS_v2.1_compressed.pt", "yuvalkirstain/PickScore_v1", "sac+logos+ava1-l14-linearMSE.pth"):
        assert needle in out
    assert "pip install image-reward" in out and "hpsv3" in out and "NOT SUPPORTED" in out
