"""Device, dtype and thread choices."""

from __future__ import annotations

import pytest

from chatcli import runtime
from chatcli.errors import UsageError


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"device": "tpu"}, "--device must be one of auto, cpu, cuda, mps (got 'tpu')"),
        ({"dtype": "int4"}, "--dtype must be one of auto, float32, bfloat16, float16 (got 'int4')"),
        ({"threads": 0}, "--threads must be at least 1 (got 0)"),
    ],
)
def test_invalid_choices(kwargs: dict, message: str) -> None:
    with pytest.raises(UsageError) as err:
        runtime.resolve_runtime(**kwargs)
    assert err.value.message == message
    assert err.value.exit_code == 2


@pytest.mark.parametrize(("native", "expected"), [(True, "bfloat16"), (False, "float32")])
def test_auto_dtype_on_cpu(monkeypatch: pytest.MonkeyPatch, native: bool, expected: str) -> None:
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    rt = runtime.resolve_runtime(device="cpu", threads=1)
    assert (rt.device, rt.dtype, rt.threads) == ("cpu", expected, 1)


def test_flag_beats_alias_dtype_beats_auto() -> None:
    assert runtime.resolve_runtime("cpu", "auto", 1, spec_dtype="float16").dtype == "float16"
    assert runtime.resolve_runtime("cpu", "float32", 1, spec_dtype="float16").dtype == "float32"


@pytest.mark.parametrize(("busy", "expected"), [(0.0, 2), (0.4, 2), (0.6, 1), (1.0, 1), (3.0, 1)])
def test_default_threads_leave_busy_cores_alone(
    monkeypatch: pytest.MonkeyPatch, busy: float, expected: int
) -> None:
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda _: {0, 1})
    monkeypatch.setattr(runtime, "other_busy_cores", lambda: busy)
    assert runtime.default_threads() == expected
    rt = runtime.resolve_runtime(device="cpu")
    assert rt.threads is None  # decided when torch is configured, after its import
    import torch

    before = torch.get_num_threads()
    try:
        assert runtime.apply_threads(rt) == expected
        assert torch.get_num_threads() == expected
    finally:
        torch.set_num_threads(before)


def test_other_busy_cores_is_measured() -> None:
    value = runtime.other_busy_cores()
    assert value is None or value >= 0.0


def test_busy_meter_sees_another_process_keep_a_core_busy() -> None:
    """A resident server decides torch's threads from what others kept busy over the last
    second (`BusyMeter`), not only at its start."""
    import subprocess
    import sys
    import time

    from chatcli.runtime import BusyMeter, default_threads

    meter = BusyMeter(window=1.0)
    meter.tick()
    assert meter.others is None  # no window has passed yet
    burn = "import time\nend = time.time() + 1.6\nwhile time.time() < end: pass"
    burner = subprocess.Popen([sys.executable, "-c", burn])
    try:
        time.sleep(1.2)
        meter.tick()
    finally:
        burner.wait(timeout=30)
    assert meter.others is not None and meter.others > 0.5
    assert default_threads(meter.others) <= max(1, default_threads(0.0) - 1)


def test_busy_meter_leaves_out_a_client_that_started_inside_its_window() -> None:
    """The command that asks the resident server for an answer has just started: its own
    start-up is not a neighbour's load; and a neighbour that has just ended does not count
    (`others_besides`)."""
    import subprocess
    import sys
    import time

    from chatcli.runtime import BusyMeter

    meter = BusyMeter(window=0.5)
    burn = "import time\nend = time.time() + 0.7\nwhile time.time() < end: pass\ntime.sleep(30)"
    client = subprocess.Popen([sys.executable, "-c", burn])
    try:
        time.sleep(1.0)
        meter.tick()
        assert meter.others is not None and meter.others > 0.4, meter.others
        besides = meter.others_besides(client.pid)
        assert besides is not None and besides < meter.others - 0.4, (meter.others, besides)
        client.kill()
        client.wait(timeout=30)
        time.sleep(0.25)
        meter.tick()  # the last tick: nobody busy any more
        assert meter.others_besides(None) is not None and meter.others_besides(None) < 0.4
    finally:
        client.kill()
        client.wait(timeout=30)
