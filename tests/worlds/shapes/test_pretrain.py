"""Base-model pretraining is deterministic given its seed and resumes without loss."""

from __future__ import annotations

from pathlib import Path

import torch

from leapalign.worlds.shapes.pretrain import Pretrainer


def test_pretraining_resumes_exactly_and_exports(tmp_path: Path) -> None:
    straight = Pretrainer(tmp_path / "a", batch=4, warmup=2)
    straight.run(4, checkpoint_every=2)
    interrupted = Pretrainer(tmp_path / "b", batch=4, warmup=2)
    interrupted.run(2, checkpoint_every=2)
    resumed = Pretrainer(tmp_path / "b", batch=4, warmup=2)  # a fresh process would do exactly this
    resumed.run(4, checkpoint_every=2)
    a, b = straight.transformer.state_dict(), resumed.transformer.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(straight.ema[k], resumed.ema[k]) for k in a)
    assert not torch.equal(
        a[next(iter(a))], Pretrainer(tmp_path / "c", batch=4).transformer.state_dict()[next(iter(a))]
    )

    from leapalign.worlds.shapes.model import load_base_transformer

    straight.export(tmp_path / "export")
    loaded = load_base_transformer(tmp_path / "export").state_dict()
    assert all(torch.equal(loaded[k], straight.ema[k]) for k in loaded)


def test_cosine_schedule_decays_resumes_exactly_and_refuses_another_total(tmp_path: Path) -> None:
    import pytest

    make = lambda out, total=4: Pretrainer(out, batch=4, warmup=2, schedule="cosine", total_steps=total)  # noqa: E731
    straight = make(tmp_path / "a")
    assert straight.lr_at(1) == pytest.approx(1e-3) and straight.lr_at(4) == pytest.approx(1e-5)
    assert straight.lr_at(2) > straight.lr_at(3) > straight.lr_at(4)
    straight.run(4, checkpoint_every=2)
    make(tmp_path / "b").run(2, checkpoint_every=2)
    resumed = make(tmp_path / "b")
    resumed.run(4, checkpoint_every=2)
    a, b = straight.transformer.state_dict(), resumed.transformer.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="resume with the same --schedule"):
        make(tmp_path / "b", total=8).load()
    with pytest.raises(ValueError, match="cosine schedule needs total_steps"):
        Pretrainer(tmp_path / "c", schedule="cosine")
