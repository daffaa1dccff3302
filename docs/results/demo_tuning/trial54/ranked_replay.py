"""Trials 54-55: LeapAlign whose replay data are reward-ranked base-model samples, not renders.

A scratch experiment, kept as it was run (it replaces the trainer's replay source in-process): for every
training prompt, the best of the base model's 4 images in ``runs/prefs/base.safetensors`` (written by
``python -m leapalign.shapes.preferences --annotator runs/annotator``) by the shipped v3 score is kept, and the
replay loss trains on those 567 images (RAFT-style reward-ranked fine-tuning). Run from the repository root:

    python docs/results/demo_tuning/trial54/ranked_replay.py --config shapes/leapalign run.output_dir=runs/t54
    python docs/results/demo_tuning/trial54/ranked_replay.py --config shapes/leapalign run.output_dir=runs/t55 \
        reward.terms.0.weight=0
"""

import sys

import torch
from safetensors.torch import load_file

import leapalign.trainer as trainer_mod
from leapalign.cli import main
from leapalign.shapes.prompts import load_metadata
from leapalign.shapes.score import ShapesScore

d = load_file("runs/prefs/base.safetensors")
meta = load_metadata("train")
images = d["images"].float() / 255
idx = d["prompt_index"].long()
prompts = [meta[i]["prompt"] for i in idx.tolist()]
reward = ShapesScore()
with torch.no_grad():
    scores = torch.cat([reward(images[i : i + 256], prompts[i : i + 256]) for i in range(0, len(prompts), 256)])
keep = []
for p in torch.unique(idx):
    same = (idx == p).nonzero().flatten()
    keep.append(same[scores[same].argmax()].item())
keep = torch.tensor(keep)
sel_images, sel_prompts = images[keep], [prompts[i] for i in keep.tolist()]


class RankedReplay:
    def __init__(self, seed, batch_size):
        self.seed, self.batch_size = seed, batch_size

    def batch(self, step):
        g = torch.Generator().manual_seed(self.seed * 100003 + step)
        pick = torch.randint(len(sel_prompts), (self.batch_size,), generator=g)
        return [sel_prompts[i] for i in pick.tolist()], sel_images[pick]


trainer_mod.build_replay = lambda source, seed, size: RankedReplay(10_000 + seed, size)
sys.exit(main(["train", *sys.argv[1:]]))
