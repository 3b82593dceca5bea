import pytest

from vidlab.bench.common import BenchError
from vidlab.bench.model import fit_step_benchmark, render
from vidlab.cli.main import main
from vidlab.models import create_model


def test_step_benchmark_measures_the_configured_model():
    result = fit_step_benchmark(
        "fit-tiny", batch_size=2, num_frames=2, steps=1, warmup=1, device="cpu", precision="bf16",
        grad_checkpointing=True,
    )
    params = sum(p.numel() for p in create_model("fit-tiny", **{"video.num_frames": 2}).parameters()) / 1e6
    assert result.params_m == pytest.approx(params)
    assert (result.num_frames, result.image_size, result.batch_size) == (2, 32, 2)
    assert result.step_ms > 0 and result.clips_per_s == pytest.approx(2000 / result.step_ms)
    assert "| fit-tiny | cpu" in render([result])


def test_bad_arguments_are_clear_errors(capsys):
    with pytest.raises(BenchError, match="precision"):
        fit_step_benchmark("fit-tiny", batch_size=2, num_frames=2, steps=1, warmup=0, device="cpu",
                           precision="fp8", grad_checkpointing=False)
    assert main(["bench", "model", "fit", "--model", "no-such-model", "--grad-checkpointing", "off"]) == 2
    assert "no-such-model" in capsys.readouterr().err
