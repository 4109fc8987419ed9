"""Offload placements: planned from the room a budget leaves, written into a tree, applied by the one loader.

Real weights, real accelerate: a tiny BERT with no room on the device runs entirely from disk and answers exactly
as the model held in memory does; its offload folder goes with the model.
"""

from __future__ import annotations

import gc
import tempfile
from pathlib import Path

import pytest
import torch

from tests.plugins.scripted import make_checkpoint
from weightflow.shared.modeling import placement
from weightflow.shared.modeling.loading import load_checkpoint


def test_a_plan_puts_the_rest_on_disk_for_a_cpu_target_and_in_host_memory_for_a_gpu() -> None:
    cpu, gpu = placement.plan("cpu", 92_000_000), placement.plan("cuda", 300_000_000)
    assert (cpu.rest, gpu.rest) == ("disk", "cpu")
    assert placement.max_memory(cpu, torch.device("cpu")) == {"cpu": 92_000_000}
    assert placement.max_memory(gpu, torch.device("cuda", 1)) == {1: 300_000_000, "cpu": placement.HOST_MEMORY_BYTES}
    assert placement.max_memory(gpu, torch.device("cpu")) == {"cpu": 300_000_000}, "measured on a CPU host"
    assert placement.plan("cpu", -5).on_device_bytes == 0
    assert "on disk" in cpu.describe() and "in host memory" in gpu.describe()
    assert placement.scheme_of(placement.offloaded("fp32")) == "fp32" and placement.scheme_of("int8") == "int8"


def test_a_tree_with_a_placement_loads_under_its_device_map_and_answers_as_the_whole_model(tmp_path: Path) -> None:
    whole_dir = make_checkpoint(tmp_path / "whole", "a")
    offloaded_dir = make_checkpoint(tmp_path / "offloaded", "a")
    placement.write(offloaded_dir, placement.plan("cpu", 0))
    assert placement.read(offloaded_dir) == placement.plan("cpu", 0) and placement.read(whole_dir) is None
    before = set(Path(tempfile.gettempdir()).glob("wf-offload-*"))
    whole = load_checkpoint(whole_dir, "AutoModel", torch.device("cpu"))
    offloaded = load_checkpoint(offloaded_dir, "AutoModel", torch.device("cpu"))
    assert getattr(offloaded, "hf_device_map", None) == {"": "disk"}, "nothing fits on the device: all on disk"
    ids = torch.tensor([[2, 10, 11, 12, 3]])
    with torch.inference_mode():
        expected = whole(input_ids=ids).last_hidden_state
        got = offloaded(input_ids=ids).last_hidden_state
    torch.testing.assert_close(got, expected)
    folders = set(Path(tempfile.gettempdir()).glob("wf-offload-*")) - before
    assert len(folders) == 1
    del offloaded
    gc.collect()
    assert not any(f.exists() for f in folders), "the offload folder goes with the model"


def test_a_malformed_placement_is_refused_with_what_is_wrong(tmp_path: Path) -> None:
    model_dir = make_checkpoint(tmp_path / "m", "a")
    (model_dir / placement.PLACEMENT_FILE).write_text('{"version": 1, "device": "tpu", "on_device_bytes": 1}')
    with pytest.raises(ValueError, match=r"weightflow-placement.json is not a placement .*device: Input should be"):
        load_checkpoint(model_dir, "AutoModel", torch.device("cpu"))
