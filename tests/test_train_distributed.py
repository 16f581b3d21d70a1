"""Two processes on localhost through `jax.distributed` (gloo CPU collectives) train on one shared mesh."""

import json
import os
import socket
import subprocess
import sys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_share_a_mesh_and_only_process_0_logs(tmp_path):
    port = free_port()
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        JAX_PLATFORMS="cpu",
        JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
    )
    cmd = [
        sys.executable, "-m", "alpamayo_jax.train",
        "--config", "experiments/stage1_action_injection.py:tiny", "--workdir", str(tmp_path / "w"),
        "--coordinator", f"localhost:{port}", "--num_processes", "2",
        "--config.total_steps=2", "--config.eval.every_steps=0", "--config.data.global_batch=4",
        "--config.checkpoint.every_steps=1",
    ]  # fmt: skip
    pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    procs = [subprocess.Popen([*cmd, "--process_id", str(i)], env=env, **pipes) for i in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    assert "mesh {'data': 1, 'fsdp': 4, 'tensor': 1} rules fsdp on 4 devices" in logs[0]
    assert "step 2/2" in logs[0] and "step 2/2" not in logs[1]
    records = [json.loads(x) for x in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert all(r["loss"] > 0 and r["grad_norm"] > 0 for r in records)
    assert sorted(os.listdir(tmp_path / "w" / "checkpoints")) == ["1", "2"]


def test_trainer_entry_keeps_nvlink_multicast_off():
    """The entry point sets the NVLS switches before JAX starts (children inherit them); explicit
    settings of the launcher win."""
    names = ("NCCL_NVLS_ENABLE", "NVSHMEM_DISABLE_NVLS", "TORCH_SYMM_MEM_DISABLE_MULTICAST")
    code = f"import os, alpamayo_jax.train.__main__; print(*(os.environ[n] for n in {names}))"
    env = {k: v for k, v in os.environ.items() if "NVLS" not in k and "MULTICAST" not in k}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["0", "1", "1"]


def test_trainer_entry_adds_the_training_xla_flags_and_keeps_explicit_ones():
    code = (
        "import os, alpamayo_jax.train.__main__; "
        "print(os.environ['XLA_PYTHON_CLIENT_MEM_FRACTION']); print(os.environ['XLA_FLAGS'])"
    )

    def flags(xla_flags: str, **env_vars: str) -> list[str]:
        env = {k: v for k, v in os.environ.items() if k != "XLA_PYTHON_CLIENT_MEM_FRACTION"}
        env = dict(env, XLA_FLAGS=xla_flags, **env_vars)
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.split()

    base = "--xla_force_host_platform_device_count=2"
    assert flags(base) == ["0.94", base, "--xla_gpu_enable_dynamic_slice_fusion=true"]
    explicit = "--xla_gpu_enable_dynamic_slice_fusion=false"
    assert flags(f"{base} {explicit}", XLA_PYTHON_CLIENT_MEM_FRACTION="0.5") == ["0.5", base, explicit]
