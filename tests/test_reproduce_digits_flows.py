"""The flows of the reproductions (:mod:`lipbound.reproduce.digits_flows`): a trained or cached
model is put on ``settings.device`` before the task (whose data sit there) evaluates it."""

from __future__ import annotations

import torch

from lipbound.reproduce import digits_flows
from lipbound.reproduce.common import Settings


def test_digits_flow_moves_the_model_to_the_settings_device(tmp_path, monkeypatch):
    # load_model maps a cached model to the CPU; on CUDA the task's evaluation would then
    # mix devices. Without a GPU, spy on the model's .to to see where it is sent.
    moved = []
    original = digits_flows.trained_model

    def spied(*args, **kwargs):
        model, cached = original(*args, **kwargs)
        to = model.to

        def recording_to(*a, **k):
            moved.append(torch.device(a[0]) if a else k.get("device"))
            return to(*a, **k)

        model.to = recording_to
        return model, cached

    monkeypatch.setattr(digits_flows, "trained_model", spied)
    settings = Settings(out=tmp_path, scale="smoke", progress=False, device="cpu")
    flow = digits_flows.digits_flow("affine", settings)
    assert torch.device("cpu") in moved
    assert next(flow.model.parameters()).device == torch.device(settings.device)
    assert next(flow.model.parameters()).dtype == torch.float32
