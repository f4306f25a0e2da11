"""Detection heads whose output channels mean something (class scores, box bins): never cut, and why.

A detector's last convolutions emit a fixed layout that its post-processing reads (Ultralytics' Detect:
`4 x reg_max` box-distribution bins and `nc` class scores per position; Segment, Pose and OBB add mask
coefficients, keypoints or angles). Cutting any of them would change what the output means, so `derive`
never offers them as widths and names the reason. Heads are recognised by their attributes (Ultralytics'
`nc` and `reg_max`, the `cv2`/`cv3`/`cv4` branches), so nothing here imports ultralytics. torchvision's heads
(RetinaNet, FCOS, the RPN) by their output convolutions' names (`cls_logits`, `bbox_reg`, `bbox_pred`,
`bbox_ctrness`), read by their box decoding.
"""
from __future__ import annotations

from torch import nn

_BRANCHES = ("cv2", "cv3", "cv4", "one2one_cv2", "one2one_cv3", "one2one_cv4")


def _is_detect(module: nn.Module) -> bool:
    return hasattr(module, "nc") and hasattr(module, "reg_max") and isinstance(getattr(module, "cv2", None),
                                                                               nn.ModuleList)


def _meaning(head: nn.Module, branch: str, channels: int) -> str:
    name = type(head).__name__
    reg_max, nc = int(head.reg_max), int(head.nc)
    if branch.endswith("cv2"):
        return f"{name} head output: 4 x {reg_max} box distribution bins (reg_max), read by its DFL decoding"
    if branch.endswith("cv3"):
        return f"{name} head output: {nc} class scores (nc)"
    extra = {"nm": "mask coefficients", "nk": "keypoint values", "ne": "angle values"}
    for attr, what in extra.items():
        if hasattr(head, attr):
            return f"{name} head output: {channels} {what} ({attr})"
    return f"{name} head output: {channels} channels its post-processing reads"


#: torchvision's detection heads (RetinaNet, FCOS, the RPN): their output convolutions, by attribute name
_TORCHVISION = {"cls_logits": "class scores", "bbox_reg": "box regression values", "bbox_pred": "box regression values",
                "bbox_ctrness": "centerness scores"}


def _torchvision_outputs(path: str, head: nn.Module) -> dict[str, str]:
    out: dict[str, str] = {}
    for attr, what in _TORCHVISION.items():
        conv = getattr(head, attr, None)
        if isinstance(conv, nn.Conv2d):
            if attr == "cls_logits" and not hasattr(head, "num_classes"):
                what = "objectness scores"  # the RPN's
            anchors = getattr(head, "num_anchors", None)
            per = f" ({anchors} anchors x {conv.out_channels // anchors})" if anchors and anchors > 1 else ""
            out[f"{path}.{attr}" if path else attr] = (f"{type(head).__name__} output: {conv.out_channels} {what}"
                                                       f"{per}, read by its box decoding")
    return out


def head_outputs(model: nn.Module) -> dict[str, str]:
    """Module path -> why its output channels are never cut, for every detection head output in `model`."""
    out: dict[str, str] = {}
    for path, head in model.named_modules():
        out.update(_torchvision_outputs(path, head))
        if not _is_detect(head):
            continue
        prefix = f"{path}." if path else ""
        for branch in _BRANCHES:
            seqs = getattr(head, branch, None)
            if not isinstance(seqs, nn.ModuleList):
                continue
            for i, seq in enumerate(seqs):
                last = seq[-1] if isinstance(seq, nn.Sequential) else seq
                if isinstance(last, nn.Conv2d):
                    where = f"{prefix}{branch}.{i}" + (f".{len(seq) - 1}" if isinstance(seq, nn.Sequential) else "")
                    out[where] = _meaning(head, branch, last.out_channels)
        dfl = getattr(head, "dfl", None)
        if isinstance(getattr(dfl, "conv", None), nn.Conv2d):
            out[f"{prefix}dfl.conv"] = f"{type(head).__name__} DFL: a fixed projection of the {head.reg_max} bins"
    return out


__all__ = ["head_outputs"]
