"""Model sources other than convscope's own: factories, exported programs, torchvision, timm.

Each loader turns one kind of spec into an ``nn.Module`` and the facts the caller
needs to feed it (class names, input size, preprocessing), and turns every failure
into a one-line :class:`~convscope.errors.ConvscopeError`. :func:`convscope.models.
zoo.load_model` picks the loader from the spec.

Pretrained weights go through torchvision's and timm's own download-and-cache
machinery (``torch.hub`` and the Hugging Face hub), so an online machine downloads
them once and an offline one finds them in the cache; when neither works the error
names what was tried and where the cache is.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import itertools
import logging
import math
import os
import re
import sys
import types
import urllib.error
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convscope.errors import ConvscopeError

__all__ = [
    "ExportedModel",
    "FactoryModel",
    "TimmModel",
    "TorchvisionModel",
    "apply_state_dict",
    "first_line",
    "is_timm_name",
    "is_torchvision_name",
    "load_exported",
    "load_factory",
    "parse_factory_spec",
    "read_state_dict",
    "seeded",
    "timm_available",
    "timm_load",
    "timm_model",
    "torchvision_load",
    "torchvision_model",
    "torchvision_names",
]

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_DOTTED = re.compile(rf"{_IDENT}(?:\.{_IDENT})*\Z")
ZOO_HINT = "pip install 'convscope[zoo]'"
_factory_counter = itertools.count()


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def _why(e: BaseException) -> str:
    return f"{type(e).__name__}: {first_line(e)}"


@contextlib.contextmanager
def seeded() -> Iterator[None]:
    """Seed 0 inside, the caller's random state untouched outside.

    Untrained builds run in here so one spec gives the same model on every run.
    """
    with torch.random.fork_rng():
        torch.manual_seed(0)
        yield


# -- state dicts ---------------------------------------------------------------------------------


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A state dict from a file, read without running code from it.

    Accepts a plain state dict or a dict that holds one under ``"state_dict"`` or
    ``"model"`` (a convscope checkpoint, most training scripts' checkpoints).

    Raises:
        ConvscopeError: missing or unreadable file, or no dict of tensors in it.
    """
    p = Path(path)
    if not p.is_file():
        raise ConvscopeError(f"state dict {p} does not exist")
    try:
        blob = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged or foreign file
        raise ConvscopeError(
            f"cannot read state dict {p}: {first_line(e)} "
            "(write one with torch.save(model.state_dict(), path))"
        ) from None
    if isinstance(blob, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(blob.get(key), Mapping):
                blob = blob[key]
                break
    if (
        not isinstance(blob, Mapping)
        or not blob
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in blob.items())
    ):
        raise ConvscopeError(
            f"{p} holds no state dict (a dict of tensors, or one under 'state_dict' or 'model')"
        )
    return dict(blob)


def _strip_prefixes(sd: dict[str, torch.Tensor], want: Mapping[str, Any]) -> dict[str, Any]:
    # a model saved under DDP ("module.") or saved wrapped behind normalisation ("net.")
    # names the same tensors with a prefix; strip it when the target has none
    for prefix in ("module.", "net."):
        if all(k.startswith(prefix) for k in sd) and not any(k.startswith(prefix) for k in want):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def apply_state_dict(net: nn.Module, path: str | os.PathLike[str], what: str) -> None:
    """Load the state dict in ``path`` into ``net``, all keys and shapes matching.

    Args:
        net: the network the tensors are for (for a model behind normalisation, the
            inner network).
        path: a file :func:`read_state_dict` accepts.
        what: how to name ``net`` in the error, e.g. ``"torchvision resnet18"``.

    Raises:
        ConvscopeError: one line naming the file and what does not fit, e.g.
            ``3 missing keys (first: conv.weight), 1 unexpected (first: head.bias)``.
    """
    p = Path(path)
    want = net.state_dict()
    sd = _strip_prefixes(read_state_dict(p), want)
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want]
    shapes = [k for k in want if k in sd and tuple(sd[k].shape) != tuple(want[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (first: {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (first: {unexpected[0]})")
    if shapes:
        k = shapes[0]
        problems.append(
            f"{len(shapes)} with another shape (first: {k} is {tuple(sd[k].shape)} in the file, "
            f"{tuple(want[k].shape)} in the model)"
        )
    if problems:
        raise ConvscopeError(f"state dict {p.name} does not fit {what}: {', '.join(problems)}")
    try:
        net.load_state_dict(sd)
    except RuntimeError as e:  # e.g. a dtype torch cannot copy
        raise ConvscopeError(f"state dict {p.name} does not fit {what}: {first_line(e)}") from None


# -- factories -----------------------------------------------------------------------------------


def parse_factory_spec(spec: str) -> tuple[str, str] | None:
    """``(target, attribute)`` for ``file.py:factory`` / ``package.module:factory``, else None.

    Raises:
        ConvscopeError: ``file.py:`` followed by something that is not a name.
    """
    target, sep, attr = spec.rpartition(":")
    if not sep or not target:
        return None
    if target.endswith(".py"):
        if not _DOTTED.match(attr):
            raise ConvscopeError(
                f"factory spec {spec!r} must look like file.py:function (a Python name after ':')"
            )
        return target, attr
    # "C:\\net.pt" (a Windows drive) or "hf-hub:..." have no name after the colon
    if _DOTTED.match(target) and _DOTTED.match(attr):
        return target, attr
    return None


@contextlib.contextmanager
def _on_sys_path(folder: Path) -> Iterator[None]:
    # a models.py usually imports its neighbours; make them importable while it loads
    entry = str(folder)
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added and entry in sys.path:
            sys.path.remove(entry)


def _import_target(target: str) -> types.ModuleType:
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ConvscopeError(f"factory file {path} does not exist")
        stem = re.sub(r"\W", "_", path.stem)
        # a fresh name per load: two files called models.py never share a module
        name = f"convscope_factory_{next(_factory_counter)}_{stem}"
        spec = importlib.util.spec_from_file_location(name, path.resolve())
        if spec is None or spec.loader is None:  # pragma: no cover - .py files always load
            raise ConvscopeError(f"cannot import {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickling look the module up here
        try:
            with _on_sys_path(path.resolve().parent):
                spec.loader.exec_module(module)
        except Exception as e:
            sys.modules.pop(name, None)
            raise ConvscopeError(f"cannot import {path}: {_why(e)}") from None
        return module
    try:
        return importlib.import_module(target)
    except Exception as e:
        raise ConvscopeError(f"cannot import module {target}: {_why(e)}") from None


class FactoryModel:
    """What :func:`load_factory` found: the module built and where it came from."""

    def __init__(self, model: nn.Module, module: types.ModuleType) -> None:
        self.model = model
        self.module = module


def load_factory(target: str, attr: str) -> FactoryModel:
    """Import ``target`` (a ``.py`` path or a dotted module) and call ``attr()`` from seed 0.

    Raises:
        ConvscopeError: missing file, import error, no such attribute, not callable,
            the factory raising, or returning something that is not an ``nn.Module``.
    """
    spec = f"{target}:{attr}"
    module = _import_target(target)
    obj: Any = module
    for i, part in enumerate(attr.split(".")):
        if not hasattr(obj, part):
            where = target if i == 0 else f"{target}:{'.'.join(attr.split('.')[:i])}"
            names = sorted(
                n
                for n, v in vars(obj).items()
                if not n.startswith("_") and callable(v) and not isinstance(v, types.ModuleType)
            )
            hint = f"; callables there: {', '.join(names[:8])}" if names else ""
            raise ConvscopeError(f"{where} has no attribute {part!r}{hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConvscopeError(
            f"{spec} is a {type(obj).__name__}, not a callable that returns a model"
        )
    folder = Path(target).resolve().parent if target.endswith(".py") else None
    try:
        with seeded(), _on_sys_path(folder) if folder else contextlib.nullcontext():
            model = obj()
    except Exception as e:
        raise ConvscopeError(f"factory {spec} raised {_why(e)}") from None
    if not isinstance(model, nn.Module):
        raise ConvscopeError(
            f"factory {spec} returned {type(model).__name__} {model!r:.40}, not a torch.nn.Module"
        )
    return FactoryModel(model, module)


# -- exported programs ---------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    # torch.export.load logs a traceback before trying its legacy format; the caller
    # gets one clear line instead
    log = logging.getLogger(logger_name)
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


class ExportedModel:
    """What :func:`load_exported` found: the module and the program's input shape."""

    def __init__(self, model: nn.Module, input_shape: tuple[int | None, ...] | None) -> None:
        self.model = model
        self.input_shape = input_shape


def _exported_input_shape(ep: Any) -> tuple[int | None, ...] | None:
    # the example input saved with the program has concrete sizes even where a
    # dimension is dynamic; the graph's placeholder says which sizes are fixed
    example = getattr(ep, "example_inputs", None)
    if example:
        args = example[0] if isinstance(example, tuple) and len(example) == 2 else example
        for a in args if isinstance(args, (tuple, list)) else ():
            if isinstance(a, torch.Tensor):
                return tuple(int(d) for d in a.shape)
    users = set(ep.graph_signature.user_inputs)
    for node in ep.graph.nodes:
        if node.op == "placeholder" and node.name in users:
            val = node.meta.get("val")
            if isinstance(val, torch.Tensor):
                return tuple(d if isinstance(d, int) else None for d in val.shape)
    return None


def load_exported(path: str | os.PathLike[str]) -> ExportedModel:
    """``torch.export.unflatten(torch.export.load(path))``, with one-line errors.

    Raises:
        ConvscopeError: missing or unreadable file, or a program that cannot become a
            module.
    """
    p = Path(path)
    if not p.is_file():
        raise ConvscopeError(f"exported program {p} does not exist")
    try:
        with _quiet("torch.export"):
            ep = torch.export.load(p)
    except Exception as e:  # zip errors, pickling errors, version mismatches
        raise ConvscopeError(
            f"cannot read exported program {p}: {first_line(e)} (write one with torch.export.save)"
        ) from None
    if not isinstance(ep, torch.export.ExportedProgram):  # pragma: no cover - defensive
        raise ConvscopeError(f"{p} holds no exported program")
    try:
        # unflatten, not ep.module(): it rebuilds the module hierarchy, so the linear
        # interpreter names bias sources by module path ("layer1.0.bn1") instead of all
        # "(root)", and .eval() works; it costs some Python per submodule call
        module = torch.export.unflatten(ep)
    except Exception as e:
        raise ConvscopeError(
            f"cannot turn exported program {p} into a module: {first_line(e)}"
        ) from None
    module.eval()
    return ExportedModel(module, _exported_input_shape(ep))


# -- downloads -----------------------------------------------------------------------------------

_NETWORK_MODULES = ("huggingface_hub", "httpx", "httpx2", "requests", "urllib3")


def _is_offline(e: BaseException) -> bool:
    """Whether ``e`` (or what caused it) says the download could not happen."""
    seen: BaseException | None = e
    for _ in range(10):  # causes can chain; never loop on a cycle
        if seen is None:
            return False
        if isinstance(seen, (urllib.error.URLError, OSError, ConnectionError, TimeoutError)):
            return True
        if type(seen).__module__.split(".")[0] in _NETWORK_MODULES:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# -- torchvision ---------------------------------------------------------------------------------


def _torchvision() -> Any:
    try:
        import torchvision
    except ImportError:  # pragma: no cover - torchvision ships with the zoo extra
        raise ConvscopeError(f"torchvision models need torchvision: {ZOO_HINT}") from None
    return torchvision


def torchvision_names() -> list[str]:
    """torchvision's classification model names (empty without torchvision)."""
    try:
        import torchvision
    except ImportError:  # pragma: no cover
        return []
    return list(torchvision.models.list_models(module=torchvision.models))


def is_torchvision_name(name: str) -> bool:
    """Whether ``name`` is a torchvision classification model."""
    return name in torchvision_names()


class TorchvisionModel:
    """A torchvision network (not yet normalised) and its weights enum, if any."""

    def __init__(self, net: nn.Module, weights: Any | None) -> None:
        self.net = net
        self.weights = weights

    def preprocess(self) -> dict[str, Any] | None:
        """The weights' own preprocessing (resize, crop, interpolation, mean, std)."""
        if self.weights is None:
            return None
        t = self.weights.transforms()
        resize = getattr(t, "resize_size", None)
        crop = getattr(t, "crop_size", None)
        interp = getattr(t, "interpolation", None)
        return {
            "resize": int(resize[0]) if resize and len(resize) == 1 else None,
            "crop": ([int(crop[0])] * 2 if len(crop) == 1 else [int(c) for c in crop])
            if crop
            else None,
            "interpolation": getattr(interp, "value", interp),
            "mean": [float(m) for m in getattr(t, "mean", ())],
            "std": [float(s) for s in getattr(t, "std", ())],
        }


def _torchvision_weights(name: str, weights: str) -> Any:
    tv = _torchvision()
    enums = tv.models.get_model_weights(name)
    # "ResNet18_Weights.IMAGENET1K_V1" (how torchvision prints them) names the member too
    member = weights.split(".", 1)[1] if weights.startswith(f"{enums.__name__}.") else weights
    if member == "DEFAULT":
        return enums.DEFAULT
    try:
        return enums[member]
    except KeyError:
        raise ConvscopeError(
            f"torchvision {name} has no weights {weights!r}; choose DEFAULT or one of "
            f"{', '.join(m.name for m in enums)}"
        ) from None


def torchvision_model(name: str, weights: str | None = None, **kwargs: Any) -> nn.Module:
    """A torchvision classification model by name (not normalised; see ``load_model``).

    Args:
        name: e.g. ``"resnet18"``.
        weights: ``None`` (untrained, built from the current random state) or
            ``"DEFAULT"`` / a weights enum name such as ``"IMAGENET1K_V1"``. Weights
            load through ``torch.hub``: from ``torch.hub.get_dir()/checkpoints`` when
            cached there, downloaded into it otherwise.

    Raises:
        ConvscopeError: unknown name or weights, or weights neither cached nor
            downloadable (the message names the URL and the cache).
    """
    return _torchvision_build(name, weights, **kwargs).net


def _torchvision_build(name: str, weights: str | None, **kwargs: Any) -> TorchvisionModel:
    tv = _torchvision()
    if not is_torchvision_name(name):
        raise ConvscopeError(f"unknown torchvision model {name!r}")
    if weights is None:
        return TorchvisionModel(tv.models.get_model(name, weights=None, **kwargs), None)
    enum = _torchvision_weights(name, weights)
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    try:
        net = tv.models.get_model(name, weights=enum, **kwargs)
    except Exception as e:
        what = f"torchvision {name} weights {enum.name} from {enum.url}"
        if _is_offline(e):
            raise ConvscopeError(
                f"cannot download {what} ({_why(e)}) and they are not in the local cache "
                f"{cache} - copy {enum.url.rsplit('/', 1)[-1]} there from a machine that is "
                "online, or use a model you trained"
            ) from None
        raise ConvscopeError(f"cannot load {what} (cache {cache}): {_why(e)}") from None
    return TorchvisionModel(net, enum)


def torchvision_load(name: str, weights: str | None) -> TorchvisionModel:
    """Build for ``load_model``: untrained ones from seed 0."""
    with seeded():
        return _torchvision_build(name, weights)


# -- timm ----------------------------------------------------------------------------------------


def _timm() -> Any:
    try:
        import timm
        import timm.data
    except ImportError:
        raise ConvscopeError(f"timm models need timm: {ZOO_HINT}") from None
    return timm


def timm_available() -> bool:
    """Whether timm can be imported."""
    return importlib.util.find_spec("timm") is not None


def is_timm_name(name: str) -> bool:
    """Whether timm knows ``name`` (an architecture, optionally ``.tag``)."""
    if not timm_available():
        return False
    return bool(_timm().is_model(name))


class TimmModel:
    """A timm network (not yet normalised) and its data configuration."""

    def __init__(self, net: nn.Module, name: str, tag: str | None) -> None:
        self.net = net
        self.name = name
        self.tag = tag  # the pretrained tag loaded, None when untrained
        self.data_config: dict[str, Any] = dict(
            _timm().data.resolve_model_data_config(net)  # input_size, crop, interpolation ...
        )

    @property
    def mean(self) -> list[float]:
        return [float(m) for m in self.data_config["mean"]]

    @property
    def std(self) -> list[float]:
        return [float(s) for s in self.data_config["std"]]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.data_config["input_size"]
        return int(c), int(h), int(w)

    def preprocess(self) -> dict[str, Any] | None:
        """The pretrained weights' evaluation preprocessing, as timm resolves it."""
        if self.tag is None:
            return None
        _, h, w = self.input_shape
        crop_pct = float(self.data_config.get("crop_pct") or 1.0)
        # timm's eval transform: resize to floor(size / crop_pct), then crop to size
        return {
            "resize": math.floor(h / crop_pct) if h == w else None,
            "crop": [h, w],
            "interpolation": str(self.data_config.get("interpolation", "bilinear")),
            "mean": self.mean,
            "std": self.std,
            "crop_pct": crop_pct,
            "crop_mode": self.data_config.get("crop_mode", "center"),
        }

    def class_names(self) -> list[str] | None:
        """Label names of the pretrained weights (None when untrained or unknown)."""
        if self.tag is None:
            return None
        cfg = getattr(self.net, "pretrained_cfg", None) or {}
        for key in ("label_descriptions", "label_names"):
            names = cfg.get(key)
            if names:
                return [str(n) for n in (names.values() if isinstance(names, dict) else names)]
        data = _timm().data
        if not hasattr(data, "ImageNetInfo"):  # timm before 0.9.8 has no label tables
            return None
        subset = data.infer_imagenet_subset(self.net)
        if subset is None:
            return None
        # "tench, Tinca tinca" -> "tench", as torchvision names the classes
        return [d.split(",")[0].strip() for d in data.ImageNetInfo(subset).label_descriptions()]


def _timm_weights_tag(timm: Any, arch: str, tag: str | None, weights: str) -> tuple[str, Any]:
    if weights != "DEFAULT":
        if tag is not None and tag != weights:
            raise ConvscopeError(
                f"timm spec {arch}.{tag} names weights {tag!r} but weights={weights!r}; give one"
            )
        tag = weights
    full = f"{arch}.{tag}" if tag else arch
    try:
        cfg = timm.models.get_pretrained_cfg(full)
    except RuntimeError:  # timm's "Invalid pretrained tag"
        cfg = None
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        tags = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{arch}.*") if "." in n]
        listing = f"; its weights: {', '.join(tags[:12])}" if tags else "; it has none"
        raise ConvscopeError(f"timm {arch} has no pretrained weights {tag or 'DEFAULT'}{listing}")
    return str(cfg.tag or tag or ""), cfg


def timm_load(spec_name: str, weights: str | None) -> TimmModel:
    """A timm model by name (``resnet10t``, ``resnet18.a1_in1k``), untrained from seed 0.

    Args:
        spec_name: the name without any ``timm/`` prefix; may carry a ``.tag``.
        weights: None (untrained), ``"DEFAULT"`` (``pretrained=True``: the tag in the
            name or timm's default tag) or a pretrained tag.

    Raises:
        ConvscopeError: timm missing, unknown name or tag, or weights neither cached
            nor downloadable (naming the URL and the cache).
    """
    timm = _timm()
    arch, _, tag_in_name = spec_name.partition(".")
    if not timm.is_model(arch):
        raise ConvscopeError(f"unknown timm model {spec_name!r}")
    tag = tag_in_name or None
    if weights is None:
        with seeded():
            try:
                # the full name, so a tag in it picks that weights' data config
                net = timm.create_model(spec_name, pretrained=False)
            except Exception as e:
                raise ConvscopeError(f"cannot build timm {arch}: {_why(e)}") from None
        return TimmModel(net, arch, None)
    tag_s, cfg = _timm_weights_tag(timm, arch, tag, weights)
    full = f"{arch}.{tag_s}" if tag_s else arch
    if cfg.hf_hub_id and importlib.util.find_spec("huggingface_hub") is not None:
        from huggingface_hub import constants  # timm prefers the hub when it is installed

        where, cache = f"https://huggingface.co/{cfg.hf_hub_id}", constants.HF_HUB_CACHE
    else:
        where, cache = str(cfg.url or cfg.file), str(Path(torch.hub.get_dir()) / "checkpoints")
    with seeded():  # layers the weights do not cover (none for timm's own) stay reproducible
        try:
            net = timm.create_model(full, pretrained=True)
        except Exception as e:
            if _is_offline(e):
                raise ConvscopeError(
                    f"cannot download timm {arch} weights {tag_s} from {where} ({_why(e)}) and "
                    f"they are not in the local cache {cache} - download them on a machine that "
                    "is online (timm caches them there), or pass a state dict you trained"
                ) from None
            raise ConvscopeError(
                f"cannot load timm {arch} weights {tag_s} (cache {cache}): {_why(e)}"
            ) from None
    return TimmModel(net, arch, tag_s)


def timm_model(name: str, weights: str | None = None) -> nn.Module:
    """A timm network by name, not normalised (see ``load_model`` for the wrapped one)."""
    return timm_load(name.removeprefix("timm/"), weights).net
