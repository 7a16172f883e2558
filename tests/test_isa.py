"""The CPU record of every timing, and that holding oneDNN to AVX2 takes effect (oneDNN's own
log line says which kernels it chose)."""
import os

import pytest

from d2lres.host import isa

pytestmark = pytest.mark.framework


def test_cpu_info_names_the_model_and_its_isa_class():
    info = isa.cpu_info()
    assert info["model"] and info["cores"] >= 1
    assert info["isa_class"] in ("avx512+amx", "avx512", "avx2", "pre-avx2")
    assert info["isa_class"] in isa.describe(info)


def test_unknown_isa_is_refused():
    with pytest.raises(ValueError, match="avx2"):
        isa.isa_env("avx9")


@pytest.mark.parametrize("framework", ["torch", "tf"])
def test_avx2_hold_reaches_onednn(framework):
    pytest.importorskip({"torch": "torch", "tf": "tensorflow"}[framework])
    if not isa.cpu_info()["avx2"]:
        pytest.skip("this CPU has no AVX2")
    # held already (CI's AVX2 step): this process's own environment must reach oneDNN
    held = isa.probe(framework) if isa.held_isa() == "avx2" else isa.probe(framework, isa.isa_env("avx2"))
    assert held is not None and "AVX2" in held and "512" not in held, held
    if isa.held_isa() == "native" and isa.cpu_info()["avx512"]:
        assert "512" in (isa.probe(framework) or "") or "AMX" in (isa.probe(framework) or "")


def test_openmp_threads_wait_passively_unless_the_user_chose():
    import os
    import subprocess
    import sys
    code = "import d2lres, os; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60).stdout.strip() == "PASSIVE"
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60).stdout.strip() == "ACTIVE"


def test_avx2_hold_reaches_xla_and_keeps_the_other_flags(monkeypatch):
    pytest.importorskip("jax")
    import subprocess
    import sys

    from d2lres.host import process
    from d2lres.loop import split
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_max_isa=AVX512 --xla_force_host_platform_device_count=2")
    env = isa.timed_process_env("avx2")  # bench, profile
    assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=2", isa.XLA_AVX2_FLAG]
    assert isa.timed_process_env("native")["XLA_FLAGS"] == os.environ["XLA_FLAGS"]
    # compare's runs (run.launch): the hold laid over a launch for 3 devices keeps that count
    launched = process.overlay(split.environment("jax", 3), isa.isa_env("avx2"))["XLA_FLAGS"].split()
    assert launched == ["--xla_force_host_platform_device_count=3", isa.XLA_AVX2_FLAG]
    # this jaxlib knows the flag (XLA aborts on one it does not) and still computes
    code = "import jax, jax.numpy as jnp; print(float(jax.jit(lambda x: (x * x).sum())(jnp.arange(4.0))))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "14.0", out.stderr[-2000:]
