"""``leapalign.preflight.check_inputs``: missing reward weights, model folders or hub ids, broken prompt files and an
unusable output folder are reported before any model is built, in one line naming the override that fixes them;
hub and OS errors of model loading become one-line messages too."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants
import pytest
from huggingface_hub.errors import LocalEntryNotFoundError

from leapalign.config import load_config
from leapalign.models import FluxAdapter, ModelConfig, SD3Adapter
from leapalign.models.hub import explain_load_errors
from leapalign.preflight import PIPELINE_FOLDERS, check_inputs
from leapalign.rewards.weights import REWARD_DIR_ENV

FLUX_ID = "black-forest-labs/FLUX.1-dev"


@pytest.fixture(autouse=True)
def _hermetic_hub(tmp_path: Path, monkeypatch) -> Path:
    """An empty hub cache, no reward folder, no offline variables (each test says what it wants)."""
    cache = tmp_path / "hub_cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    for name in (REWARD_DIR_ENV, "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    return cache


def _cache(cache: Path, repo_id: str, filename: str) -> None:
    """Puts ``filename`` of ``repo_id`` into the hub cache, laid out as the hub client writes it."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("0" * 40) / filename).write_text("{}")


def _pipeline(root: Path, kind: str = "flux", skip: str | None = None) -> Path:
    for name in PIPELINE_FOLDERS[kind]:
        if name != skip:
            (root / name).mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture
def flux_cfg(tmp_path: Path):
    def make(*overrides: str):
        base = [f"model.path={_pipeline(tmp_path / 'FLUX.1-dev')}", "data.prompts=builtin:tiny"]
        base += [f"run.output_dir={tmp_path / 'run'}", "evaluation.enabled=false"]
        return load_config("flux/leapalign", [*base, *overrides])

    return make


def test_missing_reward_weights_are_found_before_the_model_with_an_override_train_accepts(
    flux_cfg, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(FluxAdapter, "from_pretrained", lambda *a, **k: pytest.fail("the model was built"))
    with pytest.raises(FileNotFoundError) as err:
        check_inputs(flux_cfg(), offline=True)
    message = str(err.value)
    assert message.startswith("reward 'hpsv2' (reward.terms.0): HPSv2.1 weights file HPS_v2.1_compressed.pt not found")
    assert "\n" not in message and "hpsv2.checkpoint=" not in message
    hint = "reward.terms.0.args.checkpoint=/path/to/HPS_v2.1_compressed.pt"
    assert hint in message

    # the hint is an override `train` takes; with the file (and the tokenizer folder) there, every check passes
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "HPS_v2.1_compressed.pt").write_bytes(b"")
    fixed = hint.replace("/path/to", str(tmp_path / "w"))
    with pytest.raises(FileNotFoundError, match=r"HPSv2 tokenizer 'laion/CLIP-ViT-H-14-laion2B-s32B-b79K' is neither"):
        check_inputs(flux_cfg(fixed), offline=True)
    (tmp_path / "tok").mkdir()
    check_inputs(flux_cfg(fixed, f"reward.terms.0.args.tokenizer={tmp_path / 'tok'}"), offline=True)
    assert (tmp_path / "run").is_dir() and not list((tmp_path / "run").iterdir())  # the write probe is removed


def test_reward_weights_in_the_reward_folder_or_the_hub_cache_pass(flux_cfg, tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "hub_cache"
    (tmp_path / "rw").mkdir()
    (tmp_path / "rw" / "HPS_v2.1_compressed.pt").write_bytes(b"")
    monkeypatch.setenv(REWARD_DIR_ENV, str(tmp_path / "rw"))
    _cache(cache, "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "tokenizer_config.json")
    check_inputs(flux_cfg(), offline=True)
    # evaluation rewards are checked too, under their own key
    with pytest.raises(FileNotFoundError, match=r"reward 'pickscore' \(evaluation\.rewards\.1\): PickScore model"):
        check_inputs(flux_cfg("evaluation.enabled=true"), offline=True)
    # online, what is not cached is downloaded at its first use: a warning, not an error
    check_inputs(flux_cfg("evaluation.enabled=true"), offline=False)


def test_reward_arguments_and_local_reward_paths_are_checked(flux_cfg, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"reward 'hpsv2': .*'chekpoint'.*accepts: checkpoint.*reward\.terms\.0\.args"):
        check_inputs(flux_cfg("reward.terms.0.args.chekpoint=/w.pt"), offline=False)
    with pytest.raises(FileNotFoundError, match=r"reward\.terms\.0\.args\.checkpoint=/path/to/HPS_v2\.1_compressed"):
        check_inputs(flux_cfg(f"reward.terms.0.args.checkpoint={tmp_path / 'nope.pt'}"), offline=False)


def test_model_path_folders_and_hub_ids(flux_cfg, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(REWARD_DIR_ENV, str(tmp_path))
    (tmp_path / "HPS_v2.1_compressed.pt").write_bytes(b"")
    (tmp_path / "CLIP-ViT-H-14-laion2B-s32B-b79K").mkdir()
    incomplete = _pipeline(tmp_path / "partial", skip="vae")
    with pytest.raises(ValueError, match=r"model\.path='.*partial' lacks vae/: it must be a complete diffusers"):
        check_inputs(flux_cfg(f"model.path={incomplete}"), offline=True)
    with pytest.raises(ValueError, match=r"not an existing directory and does not look like a hub id"):
        check_inputs(flux_cfg(f"model.path={tmp_path / 'missing'}"), offline=True)

    with pytest.raises(FileNotFoundError) as err:
        check_inputs(flux_cfg(f"model.path={FLUX_ID}"), offline=True)
    message = str(err.value)
    assert message.startswith(f"model.path='{FLUX_ID}' is not in the local hub cache and HF_HUB_OFFLINE is set")
    assert "hf auth login" in message and "huggingface-cli login" in message and "accept the licence" in message
    assert "set model.path=DIR" in message and "\n" not in message
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline=None follows the hub client's variable
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE is set"):
        check_inputs(flux_cfg(f"model.path={FLUX_ID}"))
    _cache(tmp_path / "hub_cache", FLUX_ID, "model_index.json")
    check_inputs(flux_cfg(f"model.path={FLUX_ID}"))


def test_prompt_files_and_the_output_folder(flux_cfg, tmp_path: Path) -> None:
    cfg = load_config("tiny/leapalign", [f"run.output_dir={tmp_path / 'a' / 'b'}"])
    check_inputs(cfg, offline=True)  # the tiny model needs no files; missing folders are created
    assert (tmp_path / "a" / "b").is_dir()
    (tmp_path / "p.txt").write_text('[\n  "a cat",\n')
    with pytest.raises(ValueError, match=r"p\.txt: its first line '\[' opens JSON"):
        check_inputs(load_config("tiny/leapalign", [f"data.prompts={tmp_path / 'p.txt'}"]), offline=True)
    (tmp_path / "empty.txt").write_text("# nothing\n")
    empty = ["evaluation.enabled=true", f"evaluation.prompts={tmp_path / 'empty.txt'}"]
    with pytest.raises(ValueError, match=r"evaluation\.prompts=.*empty\.txt.*is empty"):
        check_inputs(load_config("tiny/leapalign", [f"run.output_dir={tmp_path / 'r'}", *empty]), offline=True)
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match=r"run\.output_dir='.*file' is a file, not a folder; set run\.output_dir=DIR"):
        check_inputs(load_config("tiny/leapalign", [f"run.output_dir={tmp_path / 'file'}"]), offline=True)
    with pytest.raises(ValueError, match=r"run\.output_dir='.*file/sub' is not a writable folder"):
        check_inputs(load_config("tiny/leapalign", [f"run.output_dir={tmp_path / 'file' / 'sub'}"]), offline=True)


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (
            OSError(f"You are trying to access a gated repo.\nMake sure to have access to it at {FLUX_ID}."),
            "is a gated",
        ),
        (LocalEntryNotFoundError("Cannot find the requested files in the disk cache"), "not in the local hub cache"),
        (OSError(f"{FLUX_ID} is not a local folder and is not a valid model identifier"), "no such hub repository"),
        (OSError("No space left on device"), "cannot load it"),
    ],
)
def test_hub_errors_become_one_line_with_the_fix(error: Exception, said: str) -> None:
    with pytest.raises(ValueError) as err, explain_load_errors(FLUX_ID):
        raise error
    message = str(err.value)
    assert message.startswith(f"model.path='{FLUX_ID}'") and said in message and "\n" not in message
    assert "hf auth login" in message or "HF_HUB_OFFLINE" in message
    assert err.value.__cause__ is error


@pytest.mark.parametrize("adapter", [FluxAdapter, SD3Adapter])
def test_a_broken_pipeline_folder_fails_in_one_line(adapter, tmp_path: Path) -> None:
    folder = tmp_path / "pipe"
    (folder / "transformer").mkdir(parents=True)  # no scheduler/, no weights
    kind = "flux" if adapter is FluxAdapter else "sd3"
    with pytest.raises(ValueError, match=r"cannot load this pipeline folder .*complete diffusers pipeline") as err:
        adapter.from_pretrained(str(folder), ModelConfig(name=kind, path=str(folder)))
    assert "\n" not in str(err.value)
