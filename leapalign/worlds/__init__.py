"""Worlds: self-contained plugins (a model, rewards, evaluators, prompt sets, replay data) built on the public
interfaces of the library. The core never imports this package; worlds register through ``leapalign.plugins``."""
