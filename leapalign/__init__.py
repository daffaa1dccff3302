"""leapalign: reward fine-tuning of flow-matching text-to-image models (Flux, SD3).

LeapAlign and the direct-gradient baselines (ReFL, DRaFT-K, DRaFT-LV, AlignProp, DRTune) on one rollout
engine. Time convention everywhere: ``sigma`` (1 = noise, 0 = data), see :mod:`leapalign.flow.conventions`.

Example:
    >>> from leapalign.config import load_config
    >>> from leapalign.trainer import train
    >>> result = train(load_config("tiny/leapalign", ["train.max_steps=5"]))
"""

__version__ = "0.1.0"
