"""The one exception type users see, and config instantiation that tells their mistakes from our bugs."""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Any


class PipelineError(Exception):
    """A problem with the user's input (config, data file, upstream output), named precisely.

    The CLI prints it as one line and exits 2. Raise it only where input is validated: any other
    exception is a bug and must keep its traceback.
    """


class Diverged(PipelineError):
    """The training loss became NaN or infinite (a learning rate too large, mostly). Raised by the
    training module at the end of the epoch where it happened, with `epoch` (from 1), `step` (the
    first non-finite optimizer step, from 1), `loss` (its value), `logged` (the metrics recorded so
    far, for the failed run's MLflow history) and `where` (which fit of a run: a phase, a fold); the
    stage names the run."""

    epoch: int = 0
    step: int = 0
    loss: float = float("nan")
    logged: list | None = None
    where: tuple[str, ...] = ()

    @classmethod
    def at(cls, epoch: int, step: int, loss: float) -> Diverged:
        exc = cls()
        exc.epoch, exc.step, exc.loss, exc.logged = epoch, step, loss, []
        return exc

    def describe(self) -> str:
        where = "".join(f", {w}" for w in self.where)
        return f"the training loss diverged at epoch {self.epoch} (step {self.step}{where}): loss {self.loss}"

    def __str__(self) -> str:
        return self.describe()


def did_you_mean(given: Any, valid: Any) -> str:
    """` (did you mean X?)` for the valid name closest to a misspelt one, else ``."""
    import difflib

    close = difflib.get_close_matches(str(given), [str(v) for v in valid], n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def instantiate(cfg: Any, what: str, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate(cfg, **kwargs)` where the user's mistakes become a PipelineError
    naming `what`: a `_target_` that does not exist, a key the target does not take, or a
    PipelineError the target raised while validating its arguments. Anything else raised inside the
    target is a bug in our code and propagates with its cause chain."""
    from hydra.errors import InstantiationException
    from hydra.utils import get_object
    from hydra.utils import instantiate as hydra_instantiate

    target = cfg.get("_target_")
    hydra_log = logging.getLogger("hydra.utils")
    level = hydra_log.level
    hydra_log.setLevel(logging.CRITICAL)  # it logs its own three-line error before raising; ours is one line
    try:
        check_instantiable(cfg, what)  # first: resolving a path imports its module
        try:
            obj = get_object(str(target))
        except Exception as exc:  # Hydra raises several types for a path that does not resolve
            raise PipelineError(f"{what}: _target_ {target!r} cannot be found ({exc.__class__.__name__})") from None
    finally:
        hydra_log.setLevel(level)
    check_keys(obj, [str(k) for k in cfg.keys() if not str(k).startswith("_")] + list(kwargs), what)
    check_types(obj, cfg, what)
    try:
        # Hydra builds the arguments (nested configs included); we make the call ourselves, so that
        # an exception raised inside the target reaches the caller as itself, not wrapped by Hydra.
        factory = hydra_instantiate(cfg, _partial_=True)
    except InstantiationException as exc:
        if isinstance(exc.__cause__, PipelineError):
            raise PipelineError(f"{what}: {exc.__cause__}") from exc.__cause__.__cause__
        raise
    if cfg.get("_partial_"):  # the config asks for a partial (e.g. an optimizer factory)
        return functools.partial(factory, **kwargs) if kwargs else factory
    try:
        return factory(**kwargs)
    except PipelineError as exc:
        raise PipelineError(f"{what}: {exc}") from exc.__cause__  # its own cause (a library's ValueError) kept


def check_instantiable(cfg: Any, what: str) -> None:
    """Every `_target_` of `cfg` (nested ones too) allowed by `pipeline.config.target_refusal`, and what each
    resolves to defined in an allowed module, before anything is called: a config (or the architecture
    saved in a stranger's checkpoint) cannot run `os.system`."""
    from hydra.utils import get_object

    from pipeline.config import defined_in_allowed_module, refused_target, target_refusal, targets

    for key, value in targets(cfg):
        why = target_refusal(value)
        if why:
            raise PipelineError(f"{what}: {refused_target(key, value, why)}")
        if isinstance(value, str):
            try:
                obj = get_object(value)
            except Exception:  # does not resolve: `instantiate` names it
                continue
            if not defined_in_allowed_module(obj):
                module = getattr(obj, "__module__", None) or getattr(obj, "__name__", "?")
                raise PipelineError(f"{what}: {refused_target(key, value, f'resolves to an object of {module}')}")


def check_keys(target: Any, keys: list[str], what: str) -> None:
    """Fail, naming them, on keys that `target`'s signature does not accept (a misspelt knob would
    otherwise surface as a TypeError deep inside, or be swallowed by **kwargs further down)."""
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):  # builtins without a signature: nothing to check against
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    named = [n for n, p in params.items() if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    unknown = [k for k in keys if k not in named]
    if unknown:
        raise PipelineError(f"{what}: unknown key(s) {unknown} for {getattr(target, '__qualname__', target)}; it takes {named}")


def check_types(target: Any, cfg: Any, what: str) -> None:
    """Config values against the type hints of `target`'s parameters (`alpha: float`, `hidden:
    Sequence[int]`): `alpha: big` fails here, naming the key, rather than as a ValueError inside the
    target. Hints it cannot judge (classes, callables, unresolvable names) pass."""
    import typing

    from omegaconf import OmegaConf

    try:
        hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    except Exception:  # a hint naming what only a type checker imports: nothing to check against
        return
    plain = lambda v: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v  # noqa: E731
    values = plain(cfg) if OmegaConf.is_config(cfg) else {k: plain(v) for k, v in dict(cfg).items()}  # a dict may hold ListConfig values
    for key, value in values.items():
        if not str(key).startswith("_") and key in hints and not _fits(value, hints[key]):
            raise PipelineError(f"{what}: key {key}={value!r} must be {_describe(hints[key])}")


def _fits(value: Any, hint: Any) -> bool:
    import collections.abc
    import types
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint in (int, float):
        if isinstance(value, str):  # a number YAML read as text ("1e-3")
            try:
                float(value) if hint is float else int(value)
            except ValueError:
                return False
            return True
        return isinstance(value, (int, float) if hint is float else int) and not isinstance(value, bool)
    if hint is bool:
        return isinstance(value, bool)
    if hint is str:  # a number is read as the text it was written as (`classes: [0, 1]`)
        return isinstance(value, (str, int, float)) and not isinstance(value, bool)
    if origin in (list, tuple, collections.abc.Sequence):
        item = args[0] if args and args[-1] is not Ellipsis or len(args) == 2 else None
        return isinstance(value, (list, tuple)) and (item is None or all(_fits(v, item) for v in value))
    return True


def _describe(hint: Any) -> str:
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    names = {int: "a whole number", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
    if hint in names:
        return names[hint]
    if origin is not None and args and all(a in names or typing.get_origin(a) for a in args) and len(args) > 1 and type(None) in args:
        return " or ".join(_describe(a) for a in args)
    if args:
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
    return str(hint)
