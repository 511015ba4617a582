"""Process set-up: thread counts never exceed the cores, the allocator setting, autocast choices, devices."""
from __future__ import annotations

import contextlib
import sys

import pytest
import torch

from engine import runtime


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_threads_default_to_the_usable_cores_and_are_capped(monkeypatch):
    monkeypatch.setattr(runtime, "usable_cores", lambda: 2)
    assert runtime.configure_threads() == 2 and torch.get_num_threads() == 2
    assert runtime.configure_threads(processes=2) == 1  # two processes on two cores: one thread each
    assert runtime.configure_threads(processes=8) == 1
    with pytest.warns(UserWarning, match="8 threads requested but 2 core"):
        assert runtime.configure_threads(8) == 2
    assert runtime.configure_threads(1) == 1
    with pytest.raises(ValueError, match="at least 1|>= 1"):
        runtime.configure_threads(0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_allocator_tuning_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("UAAF_MALLOC_TUNING", "0")
    assert runtime.tune_allocator() is False
    monkeypatch.delenv("UAAF_MALLOC_TUNING")
    assert runtime.tune_allocator() in (True, False)  # False on a libc without mallopt (musl)


def test_autocast_choices():
    cpu = torch.device("cpu")
    assert isinstance(runtime.autocast_context("none", cpu), contextlib.nullcontext)
    context = runtime.autocast_context("bf16", cpu)
    if runtime.cpu_supports_bf16():
        assert isinstance(context, torch.autocast)
    with pytest.warns(UserWarning, match="fp16 is not available on cpu"):
        runtime._WARNED.discard("amp: fp16 is not available on cpu; running in float32")
        assert isinstance(runtime.autocast_context("fp16", cpu), contextlib.nullcontext)
    with pytest.raises(ValueError, match="amp must be one of"):
        runtime.autocast_context("fp8", cpu)


def test_devices_that_do_not_exist_are_named():
    assert runtime.resolve_device("cpu").type == "cpu"
    with pytest.raises(runtime.DeviceError, match="unknown device 'gpu0'"):
        runtime.resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(runtime.DeviceError, match="CUDA is not available"):
            runtime.resolve_device("cuda")
