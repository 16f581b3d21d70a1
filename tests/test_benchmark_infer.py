"""`tools/benchmark.py --what infer --preset tiny --tokenizer ...`: the inference benchmark runs on the CPU
at tiny shapes with every vision tokenizer and reports its token counts and stage times."""

import math
import pathlib
import subprocess
import sys

import pytest

from alpamayo_jax.benchmarks import infer


@pytest.mark.parametrize(
    "tokenizer, vision_tokens, runs",
    # 2 cameras x 2 frames: 4 images of (64/16)^2/4 ViT tokens; 2 timesteps of 2*2 + 2*1 + 2*1 triplane
    # tokens at patch (8, 8, 8) on the tiny 16 x 16 x 8 grid; 16 Flex tokens per image in one run.
    [("per_image", 16, 4), ("triplane", 16, 2), ("flex", 64, 1)],
)
def test_tiny_inference_benchmark(tokenizer, vision_tokens, runs):
    result = infer.run("tiny", reps=1, flow_steps=(2,), dtype="float32", tokenizer=tokenizer)
    assert result["tokenizer"] == tokenizer and result["vision_tokens"] == vision_tokens
    # + <|vision_start|> / <|vision_end|> per run, 50 history-block tokens, 8 prompt tokens, <|cot_start|>.
    assert result["prefix_tokens"] == vision_tokens + 2 * runs + 50 + 8 + 1
    for key in ("vision_ms", "prefill_with_vision_ms", "decode_ms", "flow_2_steps_ms", "total_ms"):
        assert math.isfinite(result[key]) and result[key] > 0, key
    assert (tokenizer in result["params_b"]) == (tokenizer != "per_image")
    assert result["decode_attention"] == "xla" and result["prefix_attention"] == "xla"  # the CPU default
    assert result["decode_projections"] == "xla"


def test_tiny_inference_benchmark_with_the_pallas_kernels():
    """On a GPU the benchmark runs the fused kernels (the decode steps' attention and projections, the flow
    steps' attention); here interpreted."""
    result = infer.run("tiny", reps=1, flow_steps=(2,), dtype="float32", decode_attention="pallas")
    assert result["decode_attention"] == "pallas" and result["prefix_attention"] == "pallas"
    assert result["decode_projections"] == "pallas"  # the tiny layer's weights: `decode_mlp.pays_off`
    assert result["compiler_options"] == {}  # the GPU-only XLA options (`inference.compiler_options`)
    assert math.isfinite(result["total_ms"]) and result["total_ms"] > 0


def test_the_benchmark_tool_runs_inference_without_the_input_pipeline_packages():
    """A GPU host may lack PyAV, grain and tensorflow-datasets: `tools/benchmark.py --what infer` (and the
    kernel benchmark) import only their own modules, and a missing package names itself for the rest."""
    blocked = ("av", "grain", "tensorflow_datasets", "array_record")
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "sys.path.insert(0, 'tools')\n"
        "import benchmark\n"
        "print(benchmark.benchmark_module('infer').run.__module__)\n"
        "print(benchmark.benchmark_module('decode_attention').run.__module__)\n"
        "try:\n"
        "    benchmark.benchmark_module('data')\n"
        "except ImportError as e:\n"
        "    print('data:', e)\n"
    )
    root = pathlib.Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert lines[:2] == ["alpamayo_jax.benchmarks.infer", "alpamayo_jax.benchmarks.decode_attention"]
    assert lines[2].startswith("data:") and any(name in lines[2] for name in blocked)


def test_inference_compiler_options_are_known_to_xla(monkeypatch):
    """The GPU programs' XLA options are real option names (XLA rejects an unknown one at compile time,
    on any backend), and none apply off the GPU; the benchmark records the options it compiled with."""
    import jax
    import jax.numpy as jnp

    from alpamayo_jax import inference

    assert inference.compiler_options() == {}
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    options = inference.compiler_options()
    assert options == {"xla_gpu_enable_triton_gemm": False}
    x = jnp.arange(16.0).reshape(4, 4)
    out = jax.jit(lambda a: jax.nn.gelu(a @ a.T + 1.0, approximate=True), compiler_options=options)(x)
    expected = jax.nn.gelu(x @ x.T + 1.0, approximate=True)
    assert jnp.allclose(out, expected)
    with pytest.raises(Exception, match="No such compile option"):
        jax.jit(lambda a: a + 1, compiler_options={"xla_gpu_enable_triton_gemm_typo": False})(x)
