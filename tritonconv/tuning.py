"""Persistent tuning cache: the autotuner's choices, kept on disk across processes.

Triton's ``Autotuner`` keeps its choices in ``autotuner.cache``, a dict from a
key tuple (the ``key=`` argument values, then ``str(dtype)`` of every tensor
argument) to a ``triton.Config``, and forgets them when the process exits.
This module saves each newly tuned entry to a JSON file and loads the file's
entries into that dict before a kernel's first launch in a later process, so a
model is tuned once per GPU and not once per run.

    ===================  ==================================================
    what                 where
    ===================  ==================================================
    directory            $TRITONCONV_CACHE_DIR, else ~/.cache/tritonconv
                         ($XDG_CACHE_HOME/tritonconv when that is set)
    one file per         kernel family x GPU name x tritonconv version x
                         triton version
    an entry             key tuple (shape, strides = layout, dtypes) ->
                         config (meta-parameters, warps, stages, ctas)
    the router's file    "router" x GPU name x versions: (direction,
                         problem, layouts) -> the kernel family that won
                         the router's timing (``save_choice``)
    ===================  ==================================================

Each file records a signature of what its keys and configs mean (the key
argument names, the kernel's source hash, the config space). A file whose
signature or versions do not match the running code is stale: it is ignored
with a warning, the shapes are tuned again, and the next save replaces it. A
file that cannot be read or parsed is ignored the same way; nothing here ever
raises into a launch.

Hints (``TRITONCONV_TUNE_HINTS=1``; the GPU check sets it when it starts from an earlier run's
cache): where a kernel's file is stale only because the kernel's source changed (same GPU,
tritonconv and Triton versions, meta-parameters, and config space where the file records it: a
new tile must be timed), its choices are merged into ``<file>.hints.json`` and reused instead of
tuning: a shape with a hint runs the hinted config untimed, where the kernel's pruning still
keeps that very config for the launch (so a tile the current rules sync or drop is tuned as
usual), and tunes after all where this source cannot compile it. A hinted choice is never saved
as a tuned one, and ``tritonconv tune`` takes none. A fresh machine then spends a check's minutes
measuring, not retuning kernels whose change did not touch their tiles; what ran on a hint is
counted (``hints_used``), and the sweep's rows say so.

The launchers call two hooks around each launch (``before_launch`` /
``after_launch``). Once a kernel's file is loaded for a device, the hooks cost
a set lookup and a ``len()``; a save happens only after a launch that added
an entry to the autotuner's cache. Under Triton's interpreter they do nothing
(there is one config and nothing to tune).

Command line (``tritonconv tune``, or ``python -m tritonconv.tuning``)::

    tritonconv tune --preset resnet50 --batch 32 --dtype fp16 --layout channels_last
    tritonconv tune --preset resnet50 --modes forward,forward_backward
    tritonconv tune --list            # what the cache holds
    tritonconv tune --clear           # delete it
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import inspect
import json
import os
import re
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from .kernels._common import INTERPRETER, LAUNCH_LOCK
from . import plans

__all__ = [
    "ENV_DIR",
    "FORMAT",
    "cache_dir",
    "cache_path",
    "before_launch",
    "after_launch",
    "load_into",
    "save_entries",
    "kernel_signature",
    "encode_config",
    "decode_config",
    "reset_state",
    "load_choices",
    "save_choice",
    "router_choices_once",
    "router_signature",
    "recording_configs",
    "autotune_key",
    "hints_enabled",
    "hinted_config",
    "hints_used",
    "hints_off",
    "intercepted",
    "config_space",
    "main",
]

ENV_DIR = "TRITONCONV_CACHE_DIR"
HINTS_ENV = "TRITONCONV_TUNE_HINTS"
FORMAT = 1  # bump when the file layout changes


class StaleCacheWarning(UserWarning):
    """A tuning-cache file was ignored (corrupt, or written for other code)."""


# --------------------------------------------------------------------------- locations


def cache_dir() -> Path:
    """The cache directory: $TRITONCONV_CACHE_DIR, else ~/.cache/tritonconv."""
    env = os.environ.get(ENV_DIR)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tritonconv"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-") or "unknown"


def _versions() -> Tuple[str, str]:
    import triton

    from . import __version__ as tc_version

    return tc_version, triton.__version__


def cache_path(kernel: str, device_name: str, directory: Optional[Path] = None) -> Path:
    """The file for one kernel family on one GPU model, for the running versions."""
    tc_version, triton_version = _versions()
    directory = Path(directory) if directory is not None else cache_dir()
    name = f"{_slug(kernel)}__{_slug(device_name)}__tritonconv-{_slug(tc_version)}__triton-{_slug(triton_version)}.json"
    return directory / name


# --------------------------------------------------------------------------- (de)serialisation


def kernel_signature(autotuner: Any) -> str:
    """A hash of what an entry means: key names, argument names, kernel source, config space.

    Uses the JIT function's ``cache_key`` (source plus the @jit helpers it
    calls) when there is one, else its source text.
    """
    fn = getattr(autotuner, "fn", None)
    src = None
    with contextlib.suppress(Exception):
        src = fn.cache_key  # type: ignore[union-attr]
    if src is None:
        with contextlib.suppress(Exception):
            src = getattr(fn, "src", None) or inspect.getsource(getattr(fn, "fn", fn))
    return _hash({**_space_fields(autotuner), "src": str(src)})


def _space_fields(autotuner: Any) -> Dict[str, List[str]]:
    """What an entry's key and config mean, the kernel's source aside: key and argument names, the config list."""
    return {"keys": list(getattr(autotuner, "keys", [])), "args": list(getattr(autotuner, "arg_names", [])),
            "configs": [str(c) for c in getattr(autotuner, "configs", [])]}


def _hash(payload: Dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


_SCALARS = (bool, int, float, str, type(None))


def _encode_key(key: Tuple) -> Optional[List]:
    if not isinstance(key, tuple) or not all(isinstance(k, _SCALARS) for k in key):
        return None
    return list(key)


def _decode_key(raw: Any) -> Tuple:
    if not isinstance(raw, list) or not all(isinstance(k, _SCALARS) for k in raw):
        raise ValueError(f"bad key {raw!r}")
    return tuple(raw)


def encode_config(config: Any) -> Optional[Dict]:
    """A triton.Config as plain JSON data, or None if it cannot be (odd values).

    A pre_hook is not data: it belongs to the autotuner (the TMA families set
    their descriptors' block shapes in it), and loading reattaches it
    (``_read_file``).
    """
    kwargs = dict(getattr(config, "kwargs", {}))
    if not all(isinstance(k, str) and isinstance(v, _SCALARS) for k, v in kwargs.items()):
        return None
    out = {"kwargs": kwargs}
    for field in ("num_warps", "num_stages", "num_ctas", "maxnreg"):
        value = getattr(config, field, None)
        if value is not None:
            if not isinstance(value, int):
                return None
            out[field] = value
    return out


def decode_config(raw: Any):
    """Rebuild a triton.Config; raises ValueError on anything unexpected."""
    import triton

    if not isinstance(raw, dict) or not isinstance(raw.get("kwargs"), dict):
        raise ValueError(f"bad config {raw!r}")
    kwargs = raw["kwargs"]
    if not all(isinstance(k, str) and isinstance(v, _SCALARS) for k, v in kwargs.items()):
        raise ValueError(f"bad config kwargs {kwargs!r}")
    accepted = inspect.signature(triton.Config.__init__).parameters
    options = {}
    for field in ("num_warps", "num_stages", "num_ctas", "maxnreg"):
        if field in raw:
            if not isinstance(raw[field], int) or isinstance(raw[field], bool):
                raise ValueError(f"bad {field} {raw[field]!r}")
            if field in accepted:
                options[field] = raw[field]
            elif field == "maxnreg":
                continue  # an older triton without maxnreg: the entry still means the same tile
            else:
                raise ValueError(f"this triton's Config has no {field}")
    return triton.Config(dict(kwargs), **options)


def _read_file(path: Path, autotuner: Any, kernel: str, device_name: str,
               check_signature: bool = True) -> Dict[Tuple, Any]:
    """The entries of a cache file; raises ValueError (corrupt) or LookupError (stale). Without
    ``check_signature``, a file written for an earlier version of the kernel reads too (hints),
    as long as its entries' meta-parameters are the kernel's."""
    expected = _header(kernel, device_name, kernel_signature(autotuner))
    if not check_signature:
        del expected["signature"]
    raw_entries = _check_header(_parse(path), expected)
    names, optional, hook = None, set(), None
    if getattr(autotuner, "configs", None):
        names = set(autotuner.configs[0].kwargs)
        # a pruner may add a constexpr the kernel defaults (the tap-TMA pruners' SYNC_MMA on
        # Triton before 3.9, configs.synced): the tuned choice then carries it
        params = getattr(getattr(autotuner, "fn", None), "params", None)
        constexprs = ({p.name for p in params if getattr(p, "is_constexpr", False)} if params is not None
                      else set(getattr(autotuner, "arg_names", ())))
        optional = constexprs - names
        hooks = {getattr(c, "pre_hook", None) for c in autotuner.configs}
        if len(hooks) > 1:
            raise LookupError("the kernel's configs have different pre-hooks; its entries cannot be restored")
        hook = hooks.pop()
    entries: Dict[Tuple, Any] = {}
    for item in raw_entries:
        if not isinstance(item, dict):
            raise ValueError(f"bad entry {item!r}")
        key = _decode_key(item.get("key"))
        config = decode_config(item.get("config"))
        if names is not None and not names <= set(config.kwargs) <= names | optional:
            raise LookupError(f"an entry has meta-parameters {sorted(config.kwargs)}, the kernel {sorted(names)}")
        config.pre_hook = hook
        entries[key] = config
    return entries


def _warn(message: str) -> None:
    warnings.warn(f"tritonconv tuning cache: {message}", StaleCacheWarning, stacklevel=3)


def load_into(autotuner: Any, kernel: str, device_name: str, directory: Optional[Path] = None) -> Set[Tuple]:
    """Load a kernel's saved entries into ``autotuner.cache``; return the keys the file holds.

    Entries already in the in-memory cache win (they were tuned in this
    process). A missing file is normal; a corrupt or stale one warns and
    loads nothing.
    """
    path = cache_path(kernel, device_name, directory)
    if not path.exists():
        return set()
    try:
        entries = _read_file(path, autotuner, kernel, device_name)
    except LookupError as err:
        _warn(f"ignoring stale {path} ({err}); those shapes will be tuned again")
        return set()
    except Exception as err:  # corrupt: anything from JSON to a bad Config
        _warn(f"ignoring corrupt {path} ({type(err).__name__}: {err}); those shapes will be tuned again")
        return set()
    for key, config in entries.items():
        autotuner.cache.setdefault(key, config)
    return set(entries)


@contextlib.contextmanager
def _locked(path: Path):
    """Best-effort exclusive lock beside ``path`` (POSIX); a no-op where flock is missing."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    lock = open(str(path) + ".lock", "a+")
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        yield
    finally:
        with contextlib.suppress(Exception):
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
        lock.close()


def save_entries(
    autotuner: Any,
    kernel: str,
    device_name: str,
    keys: Optional[Iterable[Tuple]] = None,
    directory: Optional[Path] = None,
) -> int:
    """Merge entries of ``autotuner.cache`` (``keys``, or all) into the kernel's file.

    Entries already on disk are kept unless this process tuned the same key.
    The file is replaced atomically, under a lock, so concurrent processes do
    not corrupt it. Returns the number of entries written from this process.
    """
    path = cache_path(kernel, device_name, directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = list(autotuner.cache) if keys is None else list(keys)
    with _locked(path):
        merged: Dict[Tuple, Dict] = {}
        if path.exists():
            try:
                for key, config in _read_file(path, autotuner, kernel, device_name).items():
                    merged[key] = encode_config(config)
            except Exception:
                pass  # stale or corrupt: replaced by this write (load_into already warned)
        written = 0
        for key in keys:
            config = autotuner.cache.get(key)
            enc_key, enc_cfg = _encode_key(key), encode_config(config) if config is not None else None
            if enc_key is None or enc_cfg is None:
                continue
            merged[tuple(enc_key)] = enc_cfg
            written += 1
        entries = [{"key": list(k), "config": c} for k, c in merged.items() if c is not None]
        # the config space beside the signature: a later kernel whose source alone changed may
        # take this file's choices as hints (``TRITONCONV_TUNE_HINTS``)
        _write(path, dict(_header(kernel, device_name, kernel_signature(autotuner)), space=config_space(autotuner)),
               entries)
    return written


def _header(kernel: str, device_name: str, signature: str) -> Dict[str, Any]:
    """What a file must say to be read back by this code (``_check_header``)."""
    tc_version, triton_version = _versions()
    return {"format": FORMAT, "kernel": kernel, "device_name": device_name, "tritonconv": tc_version,
            "triton": triton_version, "signature": signature}


def _check_header(data: Any, expected: Dict[str, Any]) -> List:
    """The entry list of a parsed file; raises ValueError (corrupt) or LookupError (stale)."""
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
        raise ValueError("it has no entry list")
    for field, want in expected.items():
        if data.get(field) != want:
            raise LookupError(f"it was written for {field}={data.get(field)!r}, not {want!r}")
    return data["entries"]


def _parse(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read it ({err})") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"it is not valid JSON ({err})") from err


def _write(path: Path, header: Dict[str, Any], entries: List) -> None:
    """Replace ``path`` atomically (the caller holds its lock)."""
    data = dict(header, saved=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), entries=entries)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------- launch hooks

# Per kernel family: devices whose file is loaded, keys known to be on disk,
# and whether saving failed (then it is not retried in this process).
_loaded: Set[Tuple[str, int]] = set()
_persisted: Dict[str, Set[Tuple]] = {}
_save_failed: Set[str] = set()
_device_names: Dict[int, str] = {}
_hints: Dict[int, Dict[Tuple, Any]] = {}  # id(autotuner) -> key -> the hinted config, not yet looked at
_hinted: Dict[int, Tuple[Any, Set[Tuple]]] = {}  # id(autotuner) -> (it, keys it runs on a hint): never saved
_hints_used: Set[Tuple[int, Tuple]] = set()
_hints_off = False
_intercepting = False


def reset_state() -> None:
    """Forget what was loaded and saved (tests; a changed TRITONCONV_CACHE_DIR)."""
    _loaded.clear()
    _persisted.clear()
    _save_failed.clear()
    _device_names.clear()
    _router_loaded.clear()
    _hints.clear()
    _hints_used.clear()
    for autotuner, keys in _hinted.values():  # an untimed choice must not outlive its bookkeeping
        for key in keys:
            autotuner.cache.pop(key, None)
    _hinted.clear()


def device_name(index: int) -> str:
    name = _device_names.get(index)
    if name is None:
        import torch

        name = _device_names[index] = torch.cuda.get_device_name(index)
    return name


def before_launch(autotuner: Any, kernel: str, device: Any) -> int:
    """Call before launching ``autotuner``: loads the saved entries once per device.

    Returns the cache size to hand to ``after_launch`` (-1: nothing to do). Nothing under the
    interpreter, nor with tuning off (``configs.TUNE``: the tests' single untimed config must
    not pass for a tuned choice in a cache that sweeps share).
    """
    from . import configs

    if INTERPRETER or not configs.TUNE:
        return -1
    index = device.index if device.index is not None else 0
    if (kernel, index) not in _loaded:
        _loaded.add((kernel, index))
        if hints_enabled():
            try:
                _keep_hints(autotuner, kernel, device_name(index))
            except Exception as err:  # hints are a shortcut: without them the shapes tune
                _warn(f"could not keep hints for {kernel} ({type(err).__name__}: {err})")
        try:
            keys = load_into(autotuner, kernel, device_name(index))
            _persisted.setdefault(kernel, set()).update(keys)
            if hints_enabled():
                _load_hints(autotuner, kernel, device_name(index))
        except Exception as err:  # never let the cache break a launch
            _warn(f"could not load entries for {kernel} ({type(err).__name__}: {err})")
    return len(autotuner.cache)


# --------------------------------------------------------------------------- hints


def hints_enabled() -> bool:
    """``TRITONCONV_TUNE_HINTS=1``: reuse the choices of a file the kernel's change made stale."""
    return os.environ.get(HINTS_ENV, "0") == "1" and not _hints_off


@contextlib.contextmanager
def hints_off():
    """No hints inside the block (``tritonconv tune``, whose job is to time every candidate)."""
    global _hints_off
    old, _hints_off = _hints_off, True
    try:
        yield
    finally:
        _hints_off = old


@contextlib.contextmanager
def intercepted():
    """Launches inside the block are recorded, not run (``precompile``): a hint is applied by the
    launch that runs, so that it is counted there; precompile compiles the hinted config alone."""
    global _intercepting
    old, _intercepting = _intercepting, True
    try:
        yield
    finally:
        _intercepting = old


def config_space(autotuner: Any) -> str:
    """A hash of what a saved entry's key and config mean without the kernel's source: the key
    and argument names and the config list. Files record it beside the signature; a hint is taken
    only from a file whose kernel changed in its source alone (a new tile must be timed)."""
    return _hash(_space_fields(autotuner))


def _hints_path(kernel: str, device_name: str) -> Path:
    path = cache_path(kernel, device_name)
    return path.with_name(path.name[: -len(".json")] + ".hints.json")


def _hint_entries(path: Path, autotuner: Any, kernel: str, device_name: str) -> Dict[Tuple, Any]:
    """The entries of ``path`` as hints: same versions and meta-parameters, any source, and the
    same config space where the file records one (files from before it was recorded: any)."""
    entries = _read_file(path, autotuner, kernel, device_name, check_signature=False)
    space = _parse(path).get("space")
    if space is not None and space != config_space(autotuner):
        raise LookupError("its config space differs from the kernel's: its shapes are tuned again")
    return entries


def _keep_hints(autotuner: Any, kernel: str, device_name: str) -> None:
    """Before this code's first save replaces a file that is stale by the kernel's source alone,
    merge its choices into ``<file>.hints.json`` (the first process of a check does this; later
    ones find the file current and read the hints kept aside). Hints of still earlier runs stay
    where the stale file has no choice for their shape."""
    path, aside = cache_path(kernel, device_name), _hints_path(kernel, device_name)
    if not path.exists():
        return
    try:
        _read_file(path, autotuner, kernel, device_name)
        return  # current: nothing stale to keep
    except LookupError:
        pass
    except Exception:
        return  # corrupt
    try:
        _hint_entries(path, autotuner, kernel, device_name)
    except Exception:
        return  # stale for more than the kernel's source (versions, meta-parameters, config space)
    data = _parse(path)
    with _locked(aside):
        merged: Dict[str, Any] = {}
        if aside.exists():
            with contextlib.suppress(Exception):  # a corrupt or foreign hints file is replaced
                _hint_entries(aside, autotuner, kernel, device_name)
                merged = {json.dumps(e["key"]): e for e in _parse(aside)["entries"]}
        merged.update({json.dumps(e["key"]): e for e in data["entries"]})
        header = {k: v for k, v in data.items() if k not in ("entries", "saved")}
        _write(aside, header, list(merged.values()))


def _load_hints(autotuner: Any, kernel: str, device_name: str) -> None:
    aside = _hints_path(kernel, device_name)
    if not aside.exists():
        return
    try:
        with _locked(aside):
            entries = _hint_entries(aside, autotuner, kernel, device_name)
    except Exception as err:
        _warn(f"ignoring hints {aside} ({type(err).__name__}: {err})")
        return
    hints = {key: config for key, config in entries.items() if key not in autotuner.cache}
    if hints:
        _hints[id(autotuner)] = hints


def autotune_key(autotuner: Any, args: Sequence[Any], kwargs: Dict[str, Any]) -> Tuple:
    """The key ``Autotuner.run`` would compute for this launch (triton 3.2 to 3.9).

    The ``key=`` argument values in order, then ``str(dtype)`` of every
    argument that has a dtype (the tensors), in argument order.
    """
    named = {**dict(zip(autotuner.arg_names, args)), **kwargs}
    named = {k: v for k, v in named.items() if k in autotuner.arg_names}
    key = [named[k] for k in autotuner.keys if k in named]
    key += [str(v.dtype) for v in named.values() if hasattr(v, "dtype")]
    return tuple(key)


def hinted_config(autotuner: Any, args: Sequence[Any], kwargs: Dict[str, Any],
                  key: Optional[Tuple] = None) -> Optional[Any]:
    """The config to run this launch on from a hint, or None: the hinted config as the kernel's
    own pruning keeps it for this launch (the same meta-parameters, SYNC_MMA included, warps and
    stages; its pre-hook then the current one), never one the pruning leaves out."""
    hints = _hints.get(id(autotuner))
    if not hints:
        return None
    hint = hints.get(autotune_key(autotuner, args, kwargs) if key is None else key)
    want = encode_config(hint) if hint is not None else None
    if want is None:
        return None
    autotuner.nargs = dict(zip(autotuner.arg_names, args))
    try:
        kept = autotuner.prune_configs({k: v for k, v in kwargs.items() if k != "grid"})
    except Exception:
        return None
    finally:
        autotuner.nargs = None
    return next((c for c in kept if encode_config(c) == want), None)


def _apply_hint(autotuner: Any, kernel: str, args: Sequence[Any], kwargs: Dict[str, Any]) -> Optional[Tuple]:
    """Put a hinted config in the autotuner's cache for this launch, untimed and never saved;
    returns its key (None: no hint applies). A hint is looked at once: taken or dropped."""
    hints = _hints.get(id(autotuner))
    if not hints:
        return None
    key = autotune_key(autotuner, args, kwargs)
    if key not in hints or key in autotuner.cache:
        return None
    config = hinted_config(autotuner, args, kwargs, key)
    del hints[key]
    if config is None:
        return None
    autotuner.cache[key] = config
    _hinted.setdefault(id(autotuner), (autotuner, set()))[1].add(key)
    _hints_used.add((id(autotuner), key))
    return key


def _drop_hint(autotuner: Any, key: Tuple) -> None:
    """Forget an applied hint (its config failed to compile or launch): the key tunes as usual."""
    autotuner.cache.pop(key, None)
    _hinted.get(id(autotuner), (None, set()))[1].discard(key)
    _hints_used.discard((id(autotuner), key))


def _is_hinted(autotuner: Any, key: Tuple) -> bool:
    return key in _hinted.get(id(autotuner), (None, ()))[1]


def hints_used() -> int:
    """How many (kernel, shape) choices in this process came from hints, untimed."""
    return len(_hints_used)


def after_launch(autotuner: Any, kernel: str, device: Any, size_before: int) -> None:
    """Call after the launch: saves the entries the launch tuned, if any."""
    if size_before < 0 or len(autotuner.cache) == size_before or kernel in _save_failed:
        return
    persisted = _persisted.setdefault(kernel, set())
    new = [key for key in autotuner.cache if key not in persisted and not _is_hinted(autotuner, key)]
    if not new:
        return
    index = device.index if device.index is not None else 0
    try:
        save_entries(autotuner, kernel, device_name(index), new)
        persisted.update(new)
    except Exception as err:
        _save_failed.add(kernel)
        _warn(f"could not save tuned configs for {kernel} to {cache_dir()} ({type(err).__name__}: {err}); "
              "tuning results stay in memory for this process")


# --------------------------------------------------------------------------- the router's choices
#
# Where several kernel families accept a problem, the router (kernels/router.py) times
# each once and runs the fastest. Its choices are kept on disk as well, one file per GPU
# model ("router__<gpu>__..."), so that a later process goes straight to the family that
# won instead of tuning and timing every candidate again. A key is the router's: the
# direction, the problem's fields and the tensors' layouts (dtype, strides, alignment).

ROUTER = "router"
_router_loaded: Set[str] = set()


@functools.lru_cache(maxsize=None)
def router_signature() -> str:
    """A hash of the code a family choice was timed on: the kernels, their config spaces and
    the problem's fields, and of the router's timer (``configs.ROUTER_COLD``). Any change to
    them makes every saved choice stale."""
    from . import configs, spec
    from .kernels import router

    digest = hashlib.sha256()
    for path in sorted(Path(router.__file__).parent.glob("*.py")) + [Path(configs.__file__), Path(spec.__file__)]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    digest.update(b"cold" if configs.ROUTER_COLD else b"warm")  # the timer the choices were made with
    return digest.hexdigest()[:32]


def _as_key(raw: Any) -> Any:
    """A JSON key back into the router's nested tuples of scalars."""
    if isinstance(raw, list):
        return tuple(_as_key(v) for v in raw)
    if isinstance(raw, _SCALARS):
        return raw
    raise ValueError(f"bad key element {raw!r}")


def _read_choices(path: Path, device_name: str) -> Dict[Tuple, str]:
    """The file's choices; raises ValueError (corrupt) or LookupError (stale). A malformed entry
    is skipped, not the file: the others are still good, and the next save drops it."""
    choices: Dict[Tuple, str] = {}
    for item in _check_header(_parse(path), _header(ROUTER, device_name, router_signature())):
        if not isinstance(item, dict) or not isinstance(item.get("key"), list) or not isinstance(item.get("family"), str):
            continue
        with contextlib.suppress(ValueError):
            choices[_as_key(item["key"])] = item["family"]
    return choices


def load_choices(device_name: str, directory: Optional[Path] = None) -> Dict[Tuple, str]:
    """The router's saved choices on ``device_name`` (key -> family name). A missing file
    gives none; a stale or corrupt one gives none with a warning (the problems are timed again)."""
    path = cache_path(ROUTER, device_name, directory)
    if not path.exists():
        return {}
    try:
        return _read_choices(path, device_name)
    except LookupError as err:
        _warn(f"ignoring stale {path} ({err}); the router will time those problems' families again")
    except Exception as err:
        _warn(f"ignoring corrupt {path} ({type(err).__name__}: {err}); "
              "the router will time those problems' families again")
    return {}


def router_choices_once(device_name: str) -> Dict[Tuple, str]:
    """``load_choices`` the first time a process asks for ``device_name``, then {} (they are
    in the router's memory by then)."""
    if device_name in _router_loaded:
        return {}
    _router_loaded.add(device_name)
    return load_choices(device_name)


def save_choice(device_name: str, key: Tuple, family: str, directory: Optional[Path] = None) -> bool:
    """Add one router choice to the file for ``device_name`` (merged with what is on disk,
    replaced atomically under the lock). A failure warns once per process and returns False."""
    if ROUTER in _save_failed:
        return False
    path = cache_path(ROUTER, device_name, directory)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path):
            choices: Dict[Tuple, str] = {}
            if path.exists():
                with contextlib.suppress(Exception):  # stale or corrupt: replaced (load_choices warned)
                    choices = _read_choices(path, device_name)
            choices[key] = family
            _write(path, _header(ROUTER, device_name, router_signature()),
                   [{"key": k, "family": f} for k, f in choices.items()])
        return True
    except Exception as err:
        _save_failed.add(ROUTER)
        _warn(f"could not save the router's choices to {cache_dir()} ({type(err).__name__}: {err}); "
              "they stay in memory for this process")
        return False


# --------------------------------------------------------------------------- command line


# {kernel: config name} of each open ``recording_configs()`` block; process-wide, like the
# router's recording, because autograd runs CUDA backward ops on a thread of its own
_config_records: List[Dict[str, str]] = []
_config_records_lock = threading.Lock()


@contextlib.contextmanager
def recording_configs():
    """Collect {kernel: the config its autotuner launched} for every launch inside the block (the
    last launch's, per kernel, as ``configs.config_name`` writes it; the names are there once the
    block has closed), e.g. for the benchmark to say which tiles each layer ran."""
    from .configs import config_name

    seen: Dict[str, Any] = {}  # triton.Config objects while open (launch() stays cheap), names after
    with _config_records_lock:
        _config_records.append(seen)
    try:
        yield seen
    finally:
        with _config_records_lock:
            del _config_records[next(i for i, s in enumerate(_config_records) if s is seen)]
        for kernel, config in seen.items():
            seen[kernel] = config_name(config) if config is not None else "?"


def launch(autotuner: Any, kernel: str, device: Any, grid: Any, *args: Any, **kwargs: Any) -> None:
    """Launch an autotuned kernel with the persistent cache around it (load once, save new choices),
    one thread at a time (``_common.LAUNCH_LOCK``: the autotuner keeps the call on itself)."""
    with LAUNCH_LOCK:
        _launch(autotuner, kernel, device, grid, *args, **kwargs)


def _launch(autotuner: Any, kernel: str, device: Any, grid: Any, *args: Any, **kwargs: Any) -> None:
    size_before = before_launch(autotuner, kernel, device)
    hinted = None
    if size_before >= 0 and _hints and not _intercepting:
        try:
            hinted = _apply_hint(autotuner, kernel, args, kwargs)
        except Exception as err:  # a hint is a shortcut: the launch tunes as usual without it
            _warn(f"could not apply a hint for {kernel} ({type(err).__name__}: {err})")
    try:
        compiled = autotuner[grid](*args, **kwargs)
    except Exception as err:
        if hinted is None:
            raise
        # A hinted config won its timing under the kernel's earlier source: this source may not
        # compile it (out of resources). The autotuner skips such a config when it times it; a
        # cached one it would just launch, so take the hint back and let it tune.
        _drop_hint(autotuner, hinted)
        _warn(f"a hinted config for {kernel} failed ({type(err).__name__}: {str(err)[:160]}); tuning instead")
        compiled = autotuner[grid](*args, **kwargs)
    after_launch(autotuner, kernel, device, size_before)
    best = getattr(autotuner, "best_config", None)
    if _config_records:
        note_configs(((kernel, best),))
    if best is not None and plans.is_recording():  # the full path's launches build no record
        plans.record(autotuner.fn, grid, args, {**kwargs, **best.all_kwargs()}, compiled, (kernel, best))


def launch_direct(fn: Any, grid: Any, *args: Any, **kwargs: Any) -> None:
    """Launch a jitted kernel that has no autotuner (``fn[grid](*args, **kwargs)``), so that a
    launch plan (``plans``) records it too. Under the interpreter, one thread at a time (``LAUNCH_LOCK``)."""
    with LAUNCH_LOCK if INTERPRETER else contextlib.nullcontext():
        compiled = fn[grid](*args, **kwargs)
    if plans.is_recording():
        plans.record(fn, grid, args, kwargs, compiled)


def config_recording() -> bool:
    """Whether a ``recording_configs`` block is open (anywhere)."""
    return bool(_config_records)


def note_configs(pairs) -> None:
    """Tell each open ``recording_configs`` block that these (kernel, triton.Config) launched."""
    with _config_records_lock:
        for seen in _config_records:
            for kernel, config in pairs:
                seen[kernel] = config


def _list(directory: Path) -> int:
    files = sorted(directory.glob("*.json")) if directory.exists() else []
    print(f"tuning cache: {directory}")
    if not files:
        print("  (empty)")
    for path in files:
        try:
            data = json.loads(path.read_text())
            n = len(data.get("entries", []))
            hints = path.name.endswith(".hints.json")
            what = "hints (an earlier kernel's choices, untimed here)" if hints else "entries"
            print(f"  {path.name}: {n} {what}, saved {data.get('saved', '?')}")
        except Exception as err:
            print(f"  {path.name}: unreadable ({type(err).__name__})")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``tritonconv tune``: tune a preset's layers now, so later runs load the choices."""
    parser = argparse.ArgumentParser(
        prog="tritonconv tune",
        description="Fill the persistent tuning cache for a preset's layers (see tritonconv.tuning).",
    )
    parser.add_argument("--preset", default="resnet50", help="comma-separated preset names (default resnet50)")
    parser.add_argument("--batch", type=int, default=0, help="N (default: the preset's)")
    parser.add_argument("--dtype", default="fp16", help="comma-separated: fp16,bf16,fp32 (default fp16)")
    parser.add_argument("--layout", default="channels_last", help="comma-separated: channels_last,nchw")
    parser.add_argument("--modes", default="forward,forward_backward",
                        help="comma-separated: forward,grad_input,grad_weight,forward_backward")
    parser.add_argument("--layers", default="", help="comma-separated layer names (default: all)")
    parser.add_argument("--cache-dir", default="", help=f"cache directory (default ${ENV_DIR} or ~/.cache/tritonconv)")
    parser.add_argument("--workers", type=int, default=0, help="parallel compile threads (default: CPU count)")
    parser.add_argument("--no-precompile", action="store_true", help="compile serially while tuning")
    parser.add_argument("--list", action="store_true", help="list the cache's files and exit")
    parser.add_argument("--clear", action="store_true", help="delete the cache's files and exit")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.cache_dir:
        os.environ[ENV_DIR] = args.cache_dir
        reset_state()
    directory = cache_dir()
    if args.list:
        return _list(directory)
    if args.clear:
        removed = 0
        for path in list(directory.glob("*.json")) + list(directory.glob("*.json.lock")) if directory.exists() else []:
            path.unlink()
            removed += 1
        print(f"removed {removed} files from {directory}")
        return 0

    import torch

    if INTERPRETER or not torch.cuda.is_available():
        print("tritonconv tune: no CUDA device (Triton's interpreter has one config and nothing to tune); "
              "nothing to do", file=sys.stderr)
        return 0

    from .bench import sweep

    return sweep.tune_presets(args)


if __name__ == "__main__":
    sys.exit(main())
