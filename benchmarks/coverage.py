"""Coverage of the model zoos: per model, the derived space and whether every equivalence check passes.

    python benchmarks/coverage.py                  # the torchvision classification zoo + 93 timm models
    python benchmarks/coverage.py --quick          # a representative handful
    python benchmarks/coverage.py --models resnet18,timm:efficientnet_b0 [--size 64]
    python benchmarks/coverage.py --rows coverage.jsonl [--jobs 2]   # each model in its own process, resumable
    python benchmarks/coverage.py --family detection   # Ultralytics YOLO + torchvision detectors (whole, backbones)

Per model: channel groups, width dimensions, keep flags, frozen groups (their reasons below the table),
the smallest candidate's FLOPs ratio (the lowest reachable budget), and five checks on the smallest
candidate and 3 random ones (`--samples`): reordering keeps outputs (reorder: max relative difference), the elastic
model equals the materialized subnet (elastic), analytic FLOPs and params equal FlopCounterMode (fast
path of MultiheadAttention off) and the subnet's parameter count (flops err / params err: worst
relative error over the full, smallest and random candidates; any error is a silent cost error), and
the full-width subnet behaves like the model in train mode (train: same outputs from the same seed,
dropout and drop-path drawn alike; timm models are built with drop_rate=drop_path_rate=0.1).
Inputs are 64x64 (or the model's smallest working size); FLOPs per sample at that size.
A model passes when derive succeeds and every check passes; a CNN's space is usable when its smallest
candidate is at most 0.5 x the full FLOPs.
With `--rows FILE`, every model is checked in a fresh process (a crash, a hang or memory use takes one row,
not the sweep) and its row is appended to FILE as one JSON line; a rerun skips the models already there.
Random candidates are drawn from a generator seeded by the model's name, so a row does not depend on order.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import signal
import subprocess
import sys
import tempfile
import time
import zlib
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils import _pytree as pytree  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from evaluators.cost import CostModel  # noqa: E402
from search.models.cifar_resnet import resnet20, resnet56  # noqa: E402
from spaces.derive import derive  # noqa: E402
from spaces.elastic import ElasticModel  # noqa: E402
from spaces.materialize import materialize  # noqa: E402
from spaces.submodule import detector_parts  # noqa: E402

TIMM_CNNS = """resnet18 resnet26d resnet50 resnext26ts seresnet18 seresnext26d_32x4d ecaresnet26t ecaresnet50d skresnet18
resnet34d efficientnet_b0 efficientnet_lite0 efficientnet_es tf_efficientnet_b0 tf_efficientnet_lite0
efficientnetv2_rw_t tf_efficientnetv2_b0 mobilenetv2_050 mobilenetv2_100 mobilenetv3_large_100
mobilenetv3_small_050 tf_mobilenetv3_small_minimal_100 mobilenetv4_conv_small mobilenetv1_100 mixnet_s tf_mixnet_s
mnasnet_100 spnasnet_100 semnasnet_050 ghostnet_100 ghostnetv2_100 ghostnetv3_050 rexnet_100 rexnetr_100
regnetx_002 regnety_002 regnety_008 regnetz_b16 dla34 dla46_c dpn68 hrnet_w18_small cspresnet50 cspdarknet53
cspresnext50 cs3darknet_s darknet17 repvgg_a0 repvgg_b0 res2net50_14w_8s res2next50 resnest14d resnest26d
selecsls42b tresnet_m ese_vovnet19b_dw ese_vovnet19b_slim_dw gernet_s nf_resnet26 nf_regnet_b0 convnext_atto
convnext_femto convnextv2_atto densenet121 inception_v3 inception_v4 xception41 legacy_xception fbnetc_100
fbnetv3_b hardcorenas_a lcnet_050 lcnet_100 vgg11_bn repvit_m1 poolformer_s12""".split()
TIMM_TRANSFORMERS = """vit_tiny_patch16_224 deit_tiny_patch16_224 swin_tiny_patch4_window7_224 levit_128s pit_ti_224
convit_tiny mobilevit_xxs mobilevitv2_050 efficientvit_b0 edgenext_xx_small gmlp_ti16_224 efficientformer_l1
fastvit_t8 maxvit_tiny_rw_224 coat_lite_tiny crossvit_tiny_240 tnt_s_patch16_224""".split()
QUICK = ["resnet20", "mobilenet_v3_small", "vit_b_16", "timm:mobilenetv2_100", "timm:efficientnet_b0",
         "timm:tf_efficientnet_lite0", "timm:nf_resnet26", "timm:ghostnet_100", "timm:vit_tiny_patch16_224"]
#: the attention family: heads, MLP widths and blocks searched (`--family attention`); `hf:` names are
#: `transformers` vision models built from a small config (nothing downloaded), skipped without transformers
ATTENTION = ["timm:vit_tiny_patch16_224", "timm:deit_tiny_patch16_224", "timm:swin_tiny_patch4_window7_224",
             "timm:efficientformer_l1", "vit_b_16", "swin_t", "hf:vit", "hf:deit", "hf:swin"]
TIMEOUT = 600  # seconds per model (a model over it is a failed row)
#: the detection family: Ultralytics models built from their configs (whole models: tensor in, their own
#: (boxes, {"boxes", "scores", "feats"}) structure out), torchvision detectors' `.backbone` alone (`tvdet:`, tensor
#: in, an OrderedDict of FPN levels out) and whole torchvision detectors (`tvwhole:`, a list of images in, a list of
#: dicts out; the backbone searched inside the whole detector, the rest priced as a constant: `spaces.submodule`)
DETECTION = ["ultralytics:yolov8n", "ultralytics:yolov8s", "ultralytics:yolo11n", "ultralytics:yolov8n-seg",
             "tvdet:fasterrcnn_mobilenet_v3_large_fpn", "tvdet:retinanet_resnet50_fpn", "tvdet:fcos_resnet50_fpn",
             "tvdet:ssd300_vgg16", "tvwhole:fasterrcnn_mobilenet_v3_large_fpn", "tvwhole:retinanet_resnet50_fpn",
             "tvwhole:fcos_resnet50_fpn", "tvwhole:ssd300_vgg16", "tvwhole:ssdlite320_mobilenet_v3_large"]


def torchvision_names() -> list[str]:
    return torchvision.models.list_models(module=torchvision.models)


def all_names() -> list[str]:
    return (["resnet20", "resnet56", *torchvision_names()] + [f"timm:{n}" for n in TIMM_CNNS]
            + [f"timm:{n}" for n in TIMM_TRANSFORMERS])


def family(name: str) -> str:
    if name in DETECTION or name.startswith(("ultralytics:", "tvdet:", "tvwhole:")):
        return "detection"
    if name in ATTENTION:
        return "attention"
    if not name.startswith("timm:"):
        return "torchvision"
    return "timm-transformer" if name[5:] in TIMM_TRANSFORMERS else "timm-cnn"


def _timm(name: str, **kwargs) -> nn.Module:
    import timm

    try:
        return timm.create_model(name, pretrained=False, drop_rate=0.1, drop_path_rate=0.1, **kwargs)
    except TypeError:
        return timm.create_model(name, pretrained=False, **kwargs)


def _transformers(name: str, size: int) -> nn.Module:
    """A `transformers` vision model from a small config (random weights: nothing is downloaded)."""
    import transformers as hf

    small = {"image_size": size, "num_labels": 10}
    if name == "swin":
        config = hf.SwinConfig(**small, patch_size=4, embed_dim=24, depths=[2, 2], num_heads=[2, 4], window_size=4)
        return hf.SwinForImageClassification(config)
    vit = {**small, "patch_size": 8, "hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 3,
           "intermediate_size": 96}
    if name == "deit":
        return hf.DeiTForImageClassification(hf.DeiTConfig(**vit))
    return hf.ViTForImageClassification(hf.ViTConfig(**vit))


def build(name: str, size: int) -> tuple[nn.Module, torch.Tensor]:
    """The model (eval mode, seeded) and a 2-sample input it runs on: `size` or its smallest working size."""
    torch.manual_seed(0)
    if name.startswith("hf:"):
        return _transformers(name[3:], size).eval(), torch.randn(2, 3, size, size)
    if name in ("resnet20", "resnet56"):
        return {"resnet20": resnet20, "resnet56": resnet56}[name]().eval(), torch.randn(2, 3, 32, 32)
    if family(name) == "detection":
        return _detector(name, size)
    if name.startswith("timm:"):
        import timm

        base = name[5:]
        default = timm.get_pretrained_cfg_value(base, "input_size") or (3, 224, 224)
        attempts = [({"img_size": size}, size), ({}, size), ({}, default[-1])]
        make = lambda kw: _timm(base, **kw)  # noqa: E731
    else:
        attempts = [({}, size), ({}, 128), ({}, 224), ({}, 299)]
        make = lambda kw: torchvision.models.get_model(name, weights=None, **kw)  # noqa: E731
    error: Exception | None = None
    for kwargs, side in attempts:
        try:
            torch.manual_seed(0)
            model = make(kwargs)
            x = torch.randn(2, 3, side, side)
            with torch.no_grad():
                model.train()(x)  # the train-mode check runs it too (inception_v3's aux head needs 299)
                model.eval()(x)
            return model, x
        except Exception as e:  # noqa: BLE001 - try the next size
            error = e
    raise RuntimeError(f"cannot build at any size: {error}")


def _detector(name: str, size: int) -> tuple[nn.Module, torch.Tensor | list[torch.Tensor]]:
    """An Ultralytics model from its config (`ultralytics:yolov8n` -> yolov8n.yaml), a torchvision detector's
    backbone + FPN (`tvdet:NAME`; SSD at its 300 px), or a whole torchvision detector (`tvwhole:NAME`, resizing
    to 160 px, SSD to its own size; two images of different sizes; R-CNN keeping at most 20 proposals per image),
    with random weights."""
    kind, base = name.split(":", 1)
    torch.manual_seed(0)
    if kind == "ultralytics":
        from ultralytics.nn.tasks import DetectionModel, SegmentationModel

        model = (SegmentationModel if base.endswith("-seg") else DetectionModel)(f"{base}.yaml", verbose=False)
        side = max(64, size // 32 * 32)
    else:
        # R-CNN's RoI head is priced at the most proposals its RPN keeps: few enough that it keeps them all here
        fewer = {"rpn_post_nms_top_n_test": 20} if kind == "tvwhole" and "rcnn" in base else {}
        detector = torchvision.models.get_model(base, weights=None, weights_backbone=None, num_classes=5, **fewer)
        model, side = detector.backbone, 300 if base.startswith("ssd300") else max(size, 128)
        if kind == "tvwhole":
            side = side if base.startswith("ssd300") else max(size, 160)  # FCOS's P7 2 x 2: GroupNorm over >1 value
            if not base.startswith("ssd"):
                detector.transform.min_size, detector.transform.max_size = (side,), side
            return detector.eval(), [torch.rand(3, side, side), torch.rand(3, side * 3 // 4, side)]
    return model.eval(), torch.rand(2, 3, side, side)


def whole(name: str) -> bool:
    """A whole torchvision detector: a list of images in, a list of dicts out, trained with targets."""
    return name.startswith("tvwhole:")


def targets(images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """One box per image, for a whole detector's losses in train mode."""
    return [{"boxes": torch.tensor([[2.0, 3.0, img.shape[-1] * 0.6, img.shape[-2] * 0.7]]),
             "labels": torch.tensor([1 + i % 4])} for i, img in enumerate(images)]


def searched_outputs(model: nn.Module, x: torch.Tensor | list[torch.Tensor]) -> object:
    """The model's output on `x`; a whole detector's: what its searched parts return (reordering their channels
    keeps those, up to rounding, which may still move a box across its detector's score threshold or NMS)."""
    paths = detector_parts(model, x) if isinstance(x, list) else ()
    seen: list[object] = []
    hooks = [model.get_submodule(p).register_forward_hook(lambda m, args, out: seen.append(out)) for p in paths]
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return seen if paths else out


def searched_calls(model: nn.Module, paths: tuple[str, ...], x: list[torch.Tensor]) -> dict[str, tuple]:
    """What a whole detector calls each searched submodule with (its transform's batch, the feature maps) on the
    first image of `x`."""
    seen: dict[str, tuple] = {}
    hooks = [model.get_submodule(p).register_forward_pre_hook(lambda m, args, p=p: seen.setdefault(p, args))
             for p in paths]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def _train_reference(model: nn.Module) -> nn.Module:
    """The model in train mode, where its traced graph (made in eval mode) follows it: an Ultralytics head
    keeps its inference branch (decoded boxes; its loss reads that output too), its layers train."""
    model.train()
    for module in model.modules():
        if hasattr(module, "nc") and hasattr(module, "reg_max"):
            module.training = False  # this module's own branch only; its convolutions and BN stay in train mode
    return model


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if not b.numel():
        return 0.0 if a.shape == b.shape else float("inf")
    return (a - b).abs().max().item() / (b.abs().max().item() + 1e-6)


def out_diff(name: str, a: object, b: object) -> float:
    """How far two outputs are: every tensor of a whole detector's (lists of dicts), else the first tensor."""
    if whole(name):
        return max_diff(pytree.tree_leaves(a), pytree.tree_leaves(b))
    return rel_diff(first_tensor(a), first_tensor(b))


def first_tensor(out: object) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return first_tensor(out[0])
    if isinstance(out, dict):
        return first_tensor(next(iter(out.values())))
    raise TypeError(f"output of type {type(out).__name__}")


@dataclass
class Row:
    name: str
    family: str
    ok: bool = False
    error: str = ""
    size: int = 0
    groups: int = 0
    widths: int = 0
    keeps: int = 0
    frozen: int = 0
    min_flops: float = 1.0
    mflops: float = 0.0
    reorder: float = 0.0
    elastic: float = 0.0
    flops_err: float = 0.0
    params_err: float = 0.0
    train: float = 0.0
    heads: int = 0       # attention family: head-count dimensions
    export: str = ""     # attention, detection families: "ok" when the smallest subnet (detection: and a random
    #                      one) runs in torch.export and ONNX (ONNX Runtime's outputs equal torch's), else why
    seconds: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def cost_exact(self) -> bool:
        return self.ok and self.flops_err == 0 and self.params_err == 0

    @property
    def passed(self) -> bool:
        return (self.ok and self.reorder <= 1e-4 and self.elastic <= 1e-4 and self.cost_exact
                and self.train <= 1e-4 and self.export.split(" ")[0] in ("", "ok"))

    @property
    def usable(self) -> bool:
        return self.passed and self.min_flops <= 0.5


def count(model: nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


def check(name: str, size: int, rng: np.random.Generator, samples: int = 3) -> Row:
    row = Row(name, family(name))
    start = time.perf_counter()
    model, x = build(name, size)
    row.size = (x[0] if isinstance(x, list) else x).shape[-1]
    before = searched_outputs(model, x)
    prunable = derive(model, x[:1])
    row.reorder = out_diff(name, searched_outputs(model, x), before)
    graph, space = prunable.graph, prunable.space
    cost = CostModel(prunable)
    row.groups, row.widths, row.keeps = len(graph.groups), len(space.widths), len(space.keeps)
    row.reasons = graph.fixed_reasons()
    row.frozen = sum(row.reasons.values())
    row.mflops = cost.base.flops / 1e6
    row.min_flops = cost.price(space.smallest()).flops / max(cost.base.flops, 1)
    elastic = ElasticModel(prunable).eval()
    for i, candidate in enumerate([space.full(), space.smallest(), *(space.sample(rng) for _ in range(samples))]):
        subnet = materialize(prunable, candidate).eval()
        if i:
            elastic.apply(candidate)
            with torch.no_grad():
                row.elastic = max(row.elastic, out_diff(name, elastic(x), subnet(x)))
        price = cost.price(candidate)
        counted = count(subnet, x[:1])
        params = sum(p.numel() for p in subnet.parameters())
        row.flops_err = max(row.flops_err, abs(price.flops - counted) / max(counted, 1))
        row.params_err = max(row.params_err, abs(price.params - params) / max(params, 1))
    # train mode: the full-width subnet draws its dropout/drop-path like the model
    reference = _train_reference(copy.deepcopy(prunable.model))
    subnet = materialize(prunable, space.full()).train()
    args = (x, targets(x)) if whole(name) else (x,)  # a whole detector: its losses, from targets
    with torch.no_grad():
        torch.manual_seed(1)
        expected = reference(*args)
        torch.manual_seed(1)
        row.train = out_diff(name, subnet(*args), expected)
    if row.family == "attention":
        row.heads = sum(d.name.endswith(".heads") for d in space.widths)
        row.export = exported(materialize(prunable, space.smallest()).eval(), x)
    elif row.family == "detection":  # the smallest subnet and a random one (a whole detector's: its searched part)
        for label, candidate in (("smallest", space.smallest()), ("random", space.sample(rng))):
            subnet = materialize(prunable, candidate).eval()
            if prunable.outside is not None:  # each searched part, on what the pruned detector gives it
                calls = searched_calls(subnet, prunable.outside.paths, x)
                result = next((f".{p}: {r}" for p in prunable.outside.paths
                               if (r := exported(subnet.get_submodule(p), x, calls[p])) != "ok"), "ok")
            else:
                result = exported(subnet, x)
            if result != "ok":
                row.export = f"{label}: {result}"
                break
        else:
            paths = prunable.outside.paths if prunable.outside is not None else ()
            row.export = f"ok ({', '.join('.' + p for p in paths)})" if paths else "ok"
    row.ok = True
    row.seconds = time.perf_counter() - start
    return row


def exported(subnet: nn.Module, x: torch.Tensor, args: tuple | None = None) -> str:
    """"ok" when `subnet` runs the same under torch.export and (with onnxruntime) ONNX, else the first failure.

    It is called on `x[:1]`, or on `args`. Every output tensor is compared (structured inputs and outputs
    flattened in pytree order, as ONNX lists them)."""
    args = (x[:1],) if args is None else args
    try:
        with torch.no_grad():
            expected = pytree.tree_leaves(subnet(*args))
            program = torch.export.export(subnet, args)
            if max_diff(pytree.tree_leaves(program.module()(*args)), expected) > 1e-4:
                return "torch.export: other outputs"
        with tempfile.TemporaryDirectory() as tmp:
            path = str(Path(tmp) / "subnet.onnx")
            torch.onnx.export(subnet, args, path, dynamo=True, verbose=False)
            try:
                import onnxruntime
            except ImportError:
                return "ok"
            session = onnxruntime.InferenceSession(path)
            feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), pytree.tree_leaves(args))}
            out = session.run(None, feeds)
            if max_diff([torch.from_numpy(o) for o in out], expected) > 1e-4:
                return "onnx: other outputs"
        return "ok"
    except Exception as e:  # noqa: BLE001 - a failed export is this row's finding
        return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:120]}"


def max_diff(outputs: list[torch.Tensor], expected: list[torch.Tensor]) -> float:
    """The worst relative difference of two flat lists of outputs (infinite when their counts or shapes differ)."""
    if len(outputs) != len(expected) or any(a.shape != b.shape for a, b in zip(outputs, expected)):
        return float("inf")
    return max((rel_diff(a.float(), b.float()) for a, b in zip(outputs, expected)), default=0.0)


class _Timeout(Exception):
    pass


def _alarm(signum, frame):  # noqa: ARG001
    raise _Timeout(f"over {TIMEOUT} s")


def seeded(name: str) -> np.random.Generator:
    """The random candidates' generator for one model: seeded by its name, whatever else runs."""
    return np.random.default_rng(zlib.crc32(name.encode()))


def run(name: str, size: int, samples: int = 3) -> Row:
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(TIMEOUT)
    start = time.perf_counter()
    try:
        return check(name, size, seeded(name), samples)
    except Exception as e:  # noqa: BLE001 - a failure is a row
        row = Row(name, family(name))
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        frame = traceback.extract_tb(e.__traceback__)[-1]
        row.error = f"{type(e).__name__}: {message[:160]} ({Path(frame.filename).name}:{frame.lineno})"
        row.seconds = time.perf_counter() - start
        return row
    finally:
        signal.alarm(0)


def isolated(name: str, size: int, samples: int) -> Row:
    """One model checked in a fresh interpreter; a crash or a hang there is this model's failed row."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        command = [sys.executable, __file__, "--models", name, "--size", str(size), "--samples", str(samples),
                   "--emit", str(out)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT + 120)
        except subprocess.TimeoutExpired:
            return Row(name, family(name), error=f"timed out: over {TIMEOUT} s", seconds=time.perf_counter() - start)
        if out.exists():
            return Row(**json.loads(out.read_text()))
        tail = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return Row(name, family(name), error=f"crashed: {tail[:160]}", seconds=time.perf_counter() - start)


def load_rows(path: Path) -> dict[str, Row]:
    rows: dict[str, Row] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                row = Row(**json.loads(line))
                rows[row.name] = row
    return rows


def fmt(row: Row) -> list[str]:
    if not row.ok:
        return [row.name, "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "FAIL", f"{row.seconds:.0f}"]
    e = lambda v: "0" if v == 0 else f"{v:.1e}"  # noqa: E731
    return [row.name, str(row.size), str(row.groups), str(row.widths), str(row.keeps), str(row.frozen),
            f"{row.min_flops:.3f}", f"{row.mflops:.1f}", e(row.reorder), e(row.elastic), e(row.flops_err),
            e(row.params_err), e(row.train), f"{row.seconds:.0f}"]


HEADER = ["model", "input", "groups", "widths", "keeps", "frozen", "min FLOPs", "MFLOPs", "reorder", "elastic",
          "flops err", "params err", "train", "s"]


def totals(rows: list[Row]) -> list[str]:
    lines = []
    for fam in ("torchvision", "timm-cnn", "timm-transformer", "detection", "attention"):
        part = [r for r in rows if r.family == fam]
        if not part:
            continue
        lines.append(f"{fam}: {len(part)} models, derive ok {sum(r.ok for r in part)}, pass {sum(r.passed for r in part)}, "
                     f"usable (pass and min FLOPs <= 0.5) {sum(r.usable for r in part)}, "
                     f"cost exact {sum(r.cost_exact for r in part)}/{sum(r.ok for r in part)}, "
                     f"elastic ok {sum(r.ok and r.elastic <= 1e-4 for r in part)}, "
                     f"train ok {sum(r.ok and r.train <= 1e-4 for r in part)}")
    silent = [r.name for r in rows if r.ok and not r.cost_exact]
    lines.append(f"silent cost errors: {len(silent)} {silent if silent else ''}".rstrip())
    lines.append(f"all: {len(rows)} models, pass {sum(r.passed for r in rows)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="", help="comma-separated names (timm ones as timm:NAME)")
    parser.add_argument("--quick", action="store_true", help="a representative handful")
    parser.add_argument("--size", type=int, default=64, help="input side (the model's minimum if it fails)")
    parser.add_argument("--samples", type=int, default=3, help="random candidates per model (besides full, smallest)")
    parser.add_argument("--family", choices=["torchvision", "timm", "detection", "attention"],
                        help="only this zoo (attention: the ATTENTION models, heads searched, exports checked)")
    parser.add_argument("--rows", type=Path, help="JSON-lines file of rows: each model in its own process, "
                        "rows appended as they finish, models already there skipped")
    parser.add_argument("--jobs", type=int, default=1, help="models checked at once (with --rows)")
    parser.add_argument("--emit", type=Path, help=argparse.SUPPRESS)  # a child writes its one row here
    args = parser.parse_args(argv)
    names = args.models.split(",") if args.models else QUICK if args.quick else all_names()
    if args.family == "detection":
        names = args.models.split(",") if args.models else DETECTION
    elif args.family == "attention":
        names = args.models.split(",") if args.models else ATTENTION
    elif args.family:
        names = [n for n in names if (n.startswith("timm:")) == (args.family == "timm")]
    torch.backends.mha.set_fastpath_enabled(False)  # its fused kernel hides work from FlopCounterMode
    if args.emit:
        row = run(names[0], args.size, args.samples)
        args.emit.write_text(json.dumps(dataclasses.asdict(row)))
        return 0
    show = lambda row: print(" | ".join(fmt(row)) + (f"   {row.error}" if row.error else ""), flush=True)  # noqa: E731
    print(" | ".join(HEADER), flush=True)
    if args.rows:
        done = load_rows(args.rows)
        for name in names:
            if name in done:
                show(done[name])
        todo = [n for n in names if n not in done]
        with ThreadPoolExecutor(max(1, args.jobs)) as pool, args.rows.open("a") as sink:
            for row in pool.map(lambda n: isolated(n, args.size, args.samples), todo):
                sink.write(json.dumps(dataclasses.asdict(row)) + "\n")
                sink.flush()
                done[row.name] = row
                show(row)
        rows = [done[n] for n in names]
    else:
        rows = []
        for name in names:
            rows.append(run(name, args.size, args.samples))
            show(rows[-1])
    print()
    for r in rows:  # the most frequent reasons per model
        for reason, n in sorted(r.reasons.items(), key=lambda kv: -kv[1])[:4]:
            print(f"frozen: {r.name}: {reason} ({n} groups)")
    for r in rows:
        if r.family == "attention" and r.ok:
            print(f"attention: {r.name}: {r.heads} head-count dimensions; export: {r.export}")
        elif r.family == "detection" and r.ok:
            print(f"detection: {r.name}: export (smallest and a random subnet): {r.export}")
    print()
    for r in rows:
        if not r.passed:
            why = r.error or ", ".join(k for k, bad in (("reorder", r.reorder > 1e-4), ("elastic", r.elastic > 1e-4),
                                                       ("cost", not r.cost_exact), ("train", r.train > 1e-4),
                                                       (f"export ({r.export})", r.export.split(" ")[0] not in ("", "ok")))
                            if bad)
            print(f"fails: {r.name}: {why}")
    print()
    for line in totals(rows):
        print(line)
    return 0 if all(r.passed for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
