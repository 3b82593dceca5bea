import pytest

from vidlab.bench.common import BenchError
from vidlab.bench.model_evl import evl_step_benchmark, render
from vidlab.cli.main import main
from vidlab.models import create_model


def test_frozen_and_finetuned_rows_count_their_trainable_parameters():
    model = create_model("evl-tiny")
    total = sum(p.numel() for p in model.parameters()) / 1e6
    decoder_and_head = sum(p.numel() for m in (model.decoder, model.head) for p in m.parameters()) / 1e6
    rows = [
        evl_step_benchmark("evl-tiny", backbone=mode, batch_size=2, num_frames=4, steps=1, warmup=1, device="cpu",
                           precision="32")
        for mode in ("frozen", "fine-tuned")
    ]
    frozen, finetuned = rows
    assert frozen.params_m == pytest.approx(total) == finetuned.params_m
    assert frozen.trainable_params_m == pytest.approx(decoder_and_head) and frozen.trainable_params_m < total
    assert finetuned.trainable_params_m == pytest.approx(total)
    assert (frozen.num_frames, frozen.image_size, frozen.batch_size) == (4, 32, 2)
    assert frozen.step_ms > 0 and frozen.clips_per_s == pytest.approx(2000 / frozen.step_ms)
    table = render(rows)
    assert "| evl-tiny | frozen " in table and "| evl-tiny | fine-tuned " in table and "1.00x" in table


def test_cli_measures_both_modes_in_fresh_processes(capsys):
    assert main(["bench", "model", "evl", "--batch-size", "2", "--steps", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| evl-tiny")]
    assert [row.split("|")[2].strip() for row in rows] == ["frozen", "fine-tuned"]
    assert all(float(row.split("|")[12]) > 0 for row in rows)  # peak RSS of the measurement process


def test_bad_arguments_are_clear_errors(capsys):
    with pytest.raises(BenchError, match="backbone must be one of"):
        evl_step_benchmark("evl-tiny", backbone="half", batch_size=2, num_frames=4, steps=1, warmup=0, device="cpu",
                           precision="32")
    assert main(["bench", "model", "evl", "--model", "no-such-model", "--steps", "1"]) == 2
    assert "no-such-model" in capsys.readouterr().err
