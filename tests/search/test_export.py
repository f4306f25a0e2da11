"""`search.export`: every format round trip on one real (tiny) run, fallbacks, and every user error as one line."""
from __future__ import annotations

import shutil
import sys

import pytest
import torch

from conftest import one_run
from search.errors import UserError
from search.export import ExportError, ExportResult, export, main, rebuild
from search.finetune import finetune
from search.models.zoo import load_model

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.load.* is deprecated:FutureWarning")

FAST = ["--baseline-epochs", "1", "--trials", "4", "--calib-batches", "2", "--batch-size", "32",
        "--eval-samples", "64", "--no-progress", "--quiet", "--finalists", "2", "--finalist-steps", "2",
        "--reconstruct", "64"]  # the refit on 64 inputs, not 1024: seconds less a run


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One real run directory for the module (see conftest.one_run)."""
    yield from one_run(tmp_path_factory, "export", FAST)


@pytest.fixture
def run_dir(made, tmp_path):
    """A private copy of the run, so that what one test writes into it no other test sees."""
    return shutil.copytree(made / "run", tmp_path / "run")


def subnet(path):
    return torch.load(path, weights_only=False).eval()


def sample(batch=3):
    return torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(7))


def assert_close(actual, expected, rel=1e-4):
    scale = expected.abs().max().item() + 1e-6
    assert (actual - expected).abs().max().item() <= rel * scale


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


LOADERS = {
    "pt": lambda p: torch.export.load(str(p)).module(),
    "torchscript": lambda p: torch.jit.load(str(p)),
}


@pytest.mark.parametrize("fmt, flags, name", [("pt", [], "best.pt2"),  # pt is the default format
                                               ("torchscript", ["--format", "torchscript"], "best.torchscript.pt")])
def test_round_trip_loads_and_matches_with_a_dynamic_batch(run_dir, capsys, fmt, flags, name):
    code, out, err = cli(capsys, run_dir, *flags)
    assert code == 0, err
    head = out.splitlines()[0]
    assert str(run_dir / name) in head and f"format {fmt}, dynamic batch" in head and "max abs diff" in head
    loaded = LOADERS[fmt](run_dir / name)
    x = sample(3)  # a batch size the export never saw
    with torch.no_grad():
        assert_close(loaded(x), subnet(run_dir / "best.pt")(x))


def test_a_batch_of_one_gives_a_fixed_batch_with_a_warning(run_dir, capsys):
    code, out, err = cli(capsys, run_dir, "--batch", "1")
    assert code == 0 and "format pt, fixed batch" in out
    assert err.count("\n") == 1 and err.startswith("warning: the batch size is fixed to 1") and "--batch 2" in err
    x = sample(1)
    with torch.no_grad():
        assert_close(torch.export.load(str(run_dir / "best.pt2")).module()(x), subnet(run_dir / "best.pt")(x))


def test_state_dict_round_trip_and_the_printed_rebuild_recipe(made, run_dir, capsys):
    code, out, err = cli(capsys, run_dir, "--format", "state_dict")
    assert code == 0, err
    path = run_dir / "best.state_dict.pt"
    assert str(path) in out and "format state_dict" in out and "search.export.rebuild(" in out
    state = torch.load(path, weights_only=True)
    best = subnet(run_dir / "best.pt")
    assert state.keys() == best.state_dict().keys()
    base = load_model("resnet20", num_classes=10, input_shape=(1, 8, 8))
    base.load_state_dict(torch.load(next((made / "cache").glob("*.pt"))))
    rebuilt = rebuild(run_dir / "best.json", base)
    rebuilt.load_state_dict(state)
    with torch.no_grad():
        assert_close(rebuilt.eval()(sample()), best(sample()))


def test_python_api(run_dir):
    result = export(run_dir, "state_dict", batch=3)
    assert isinstance(result, ExportResult)
    assert result.path == run_dir / "best.state_dict.pt" and result.format == "state_dict"
    assert result.compared and result.max_abs_diff == 0.0 and result.source == run_dir / "best.pt"
    with pytest.raises(UserError, match="unknown format"):
        export(run_dir, "tflite")


def test_onnx_round_trip_with_a_dynamic_batch_axis(run_dir, capsys):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    code, out, err = cli(capsys, run_dir, "--format", "onnx")
    assert code == 0, err
    path = run_dir / "best.onnx"
    assert str(path) in out and "format onnx, dynamic batch" in out and "max abs diff" in out
    assert not list(run_dir.glob("*.data"))  # one self-contained file
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"
    x = sample(5)
    (y,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert_close(torch.from_numpy(y), subnet(run_dir / "best.pt")(x))


def test_onnx_without_onnxscript_uses_the_legacy_exporter(run_dir, monkeypatch, capsys):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    result = export(run_dir, "onnx", out=run_dir / "legacy.onnx")
    assert result.compared and result.dynamic_batch and result.max_abs_diff < 1e-4
    assert any("legacy" in note for note in result.notes)


def test_onnx_without_onnxruntime_is_checked_but_not_compared(run_dir, monkeypatch, capsys):
    pytest.importorskip("onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    code, out, err = cli(capsys, run_dir, "--format", "onnx")
    assert code == 0, err
    assert "max abs diff n/a" in out and "onnxruntime is not installed" in out
    assert 'pip install "prunesearch[onnx]"' in err
    assert (run_dir / "best.onnx").is_file()


def test_missing_onnx_names_the_extra_before_any_work(run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)
    for where in (run_dir, tmp_path / "not-a-run"):  # checked before the run directory is even opened
        code, out, err = cli(capsys, where, "--format", "onnx")
        assert code == 2 and out == ""
        assert err.count("\n") == 1 and 'pip install "prunesearch[onnx]"' in err
    assert not list(run_dir.glob("*.onnx"))


def test_finetuned_needs_finetune_first(run_dir, capsys):
    code, out, err = cli(capsys, run_dir, "--finetuned", "--format", "torchscript")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "finetuned.pt" in err and f"python -m search.finetune {run_dir}" in err


def test_finetuned_exports_the_finetuned_weights(run_dir, capsys):
    finetune(run_dir, epochs=1, batch_size=256, progress=False)
    code, out, err = cli(capsys, run_dir, "--finetuned", "--format", "torchscript")
    assert code == 0, err
    path = run_dir / "finetuned.torchscript.pt"
    assert str(path) in out
    x = sample()
    with torch.no_grad():
        y = torch.jit.load(str(path))(x)
        assert_close(y, subnet(run_dir / "finetuned.pt")(x))
        assert not torch.allclose(y, subnet(run_dir / "best.pt")(x))


def test_out_is_a_file_or_an_existing_folder(run_dir, tmp_path, capsys):
    target = tmp_path / "deploy" / "sub" / "model.ts"
    assert cli(capsys, run_dir, "--format", "torchscript", "--out", target)[0] == 0
    assert target.is_file() and not (run_dir / "best.torchscript.pt").exists()
    code, out, _ = cli(capsys, run_dir, "--format", "torchscript", "--out", target.parent)
    assert code == 0 and (target.parent / "best.torchscript.pt").is_file()
    assert str(target.parent / "best.torchscript.pt") in out


def test_scripting_failure_falls_back_to_tracing_with_a_warning(run_dir, monkeypatch, capsys):
    def unscriptable(*args, **kwargs):
        raise RuntimeError("Python builtin <built-in function id> is currently not supported in Torchscript")

    monkeypatch.setattr(torch.jit, "script", unscriptable)
    code, out, err = cli(capsys, run_dir, "--format", "torchscript")
    assert code == 0
    assert err.count("\n") == 1 and err.startswith("warning: torch.jit.script failed") and "traced" in err
    assert "fixed batch" in out
    x = sample(2)
    with torch.no_grad():
        assert_close(torch.jit.load(str(run_dir / "best.torchscript.pt"))(x), subnet(run_dir / "best.pt")(x))


def test_an_artifact_that_does_not_match_fails_with_exit_1(run_dir, monkeypatch, capsys):
    real = torch.jit.load

    def off_by_one(*args, **kwargs):
        module = real(*args, **kwargs)
        return lambda x: module(x) + 1.0

    monkeypatch.setattr(torch.jit, "load", off_by_one)
    code, out, err = cli(capsys, run_dir, "--format", "torchscript")
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "does not reproduce the PyTorch subnet" in err and "max abs diff" in err
    with pytest.raises(ExportError) as caught:
        export(run_dir, "torchscript")
    assert caught.value.result.max_abs_diff > 0.5


def test_an_export_that_fails_midway_leaves_the_previous_file_whole(run_dir, monkeypatch, capsys):
    """The artifact is written beside its path and moved into place whole: an exporter that dies after writing
    half a file leaves the earlier export as it was, and nothing else behind."""
    assert cli(capsys, run_dir, "--format", "torchscript")[0] == 0
    before = (run_dir / "best.torchscript.pt").read_bytes()
    names = sorted(p.name for p in run_dir.iterdir())

    def half_then_crash(module, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"half a file")
        raise RuntimeError("disk went away")

    monkeypatch.setattr(torch.jit.RecursiveScriptModule, "save", half_then_crash)
    code, out, err = cli(capsys, run_dir, "--format", "torchscript")
    assert code == 1 and "torchscript export of best.pt failed: RuntimeError: disk went away" in err
    assert (run_dir / "best.torchscript.pt").read_bytes() == before
    assert sorted(p.name for p in run_dir.iterdir()) == names  # no staging folder or temporary file left


def test_user_errors_are_one_line_and_exit_2(run_dir, tmp_path, capsys):
    for argv, message in [((tmp_path / "nowhere",), "is not a run directory"),
                          ((tmp_path,), "is not a run directory"),
                          ((run_dir, "--batch", "0"), "--batch must be positive"),
                          ((run_dir, "--format", "state_dict", "--out", run_dir / "best.pt"), "would overwrite")]:
        code, out, err = cli(capsys, *argv)
        assert code == 2 and out == "" and err.count("\n") == 1 and message in err, (argv, err)
    (run_dir / "best.state_dict.pt").unlink()  # an older run: only the pickled best.pt
    code, _, err = cli(capsys, run_dir)
    assert code == 2 and "--trust-pickle" in err  # unpickling runs code: only when told
    code, _, err = cli(capsys, run_dir, "--trust-pickle")
    assert code == 0, err
    (run_dir / "best.pt").unlink()
    code, _, err = cli(capsys, run_dir)
    assert code == 2 and "no best.pt" in err


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["--help"])
    assert caught.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for word in ("run_dir", "--format", "pt,torchscript,onnx,state_dict", "--finetuned", "--out", "--batch",
                 "best.pt2", "best.torchscript.pt", "best.onnx", "best.state_dict.pt", "prunesearch[onnx]",
                 "search.export.rebuild", "(default: 2)"):
        assert word in text, word
