"""Adapters that run zoplatform's ZO methods inside other training tools.

* :mod:`zoplatform.integrations.hf` -- ``ZOTrainer``, a ``transformers.Trainer``
  whose training step is any registered ZO method (imports transformers).

Submodules are imported on demand so that ``import zoplatform`` never pulls in
a training framework it does not need.
"""
