"""Feature networks for FID/KID/PR/IS: found on disk (never downloaded implicitly), hash-checked, cached.

The standard metrics of StyleGAN2-ADA run two TorchScript feature networks published by NVIDIA:

* ``inception``: ``inception-2015-12-05.pt``, a TorchScript translation of TensorFlow's 2015-12-05
  Inception-v3 (FID, KID, IS). ``detector(img_uint8, return_features=True)`` gives the 2048-D pool
  features; ``detector(img_uint8, no_output_bias=True)`` the 1008-way softmax used for IS.
* ``vgg16``: ``vgg16.pt``, VGG-16 features for precision/recall
  (``detector(img_uint8, return_features=True)``).

Both take ``uint8 [N, 3, H, W]`` images of any size (they resize internally). The newer NVIDIA code
(stylegan3, EDM) ships the same networks pickled as ``.pkl``; a pickle can run code when loaded, so
a ``.pkl`` is only loaded when its SHA-256 is pinned (``GANSTACK_<NAME>_SHA256`` or the
``sha256=`` argument) and matches.

No machine here can download them, so a detector is looked up in this order: the path or URL the
user gives (``--detector [name=]PATH_OR_URL`` of ``ganstack metrics``), the environment variable
(``GANSTACK_INCEPTION``, ``GANSTACK_VGG16``), then the cache folder
(``$GANSTACK_CACHE/detectors``, default ``~/.cache/ganstack/detectors``). A file that loaded and answered
like a feature network is copied into the cache (atomically, and never over a working cached file unless
its digest is pinned), so it has to be given only once per machine; a bad file never touches the cache. When none is found the error says what
the file is, where it comes from and where to put it.

SHA-256: NVIDIA does not publish digests next to these files, and none could be confirmed from here,
so ``DetectorSpec.sha256`` is empty for both; :func:`file_sha256` of a file you trust can be pinned
with ``GANSTACK_INCEPTION_SHA256`` (a mismatch is then an error). The digest of the file actually
used is part of every real-statistics cache key and of every metric result.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Optional

import torch

from ganstack.stylegan_base.errors import GanstackError
from ganstack.stylegan_base.progress import progress


class DetectorError(GanstackError):
    """A feature network for the metrics is missing, corrupt, or not the expected file."""


@dataclass(frozen=True)
class DetectorSpec:
    name: str
    filename: str
    url: str
    env: str
    what: str
    # Published SHA-256 digests of the file (any one matches). Empty: none known (see module doc).
    sha256: tuple = field(default_factory=tuple)


DETECTORS = {
    "inception": DetectorSpec(
        name="inception", filename="inception-2015-12-05.pt",
        url="https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt",
        env="GANSTACK_INCEPTION",
        what="the StyleGAN2-ADA TorchScript Inception-v3 (TensorFlow's inception-2015-12-05 graph, about 95 MB), "
             "used by FID, KID and IS"),
    "vgg16": DetectorSpec(
        name="vgg16", filename="vgg16.pt",
        url="https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/vgg16.pt",
        env="GANSTACK_VGG16",
        what="the StyleGAN2-ADA TorchScript VGG-16 feature network (about 528 MB), used by precision/recall"),
}


def cache_root() -> str:
    return os.environ.get("GANSTACK_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ganstack")


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Detector:
    """A loaded feature network and where it came from."""

    name: str
    module: torch.nn.Module
    path: str
    sha256: str
    verified: bool  # the digest matched a published or pinned one

    def __call__(self, img_uint8: torch.Tensor, **kwargs) -> torch.Tensor:
        if img_uint8.dtype != torch.uint8:
            raise TypeError("feature networks take uint8 images (the StyleGAN2-ADA protocol)")
        if img_uint8.shape[1] == 1:
            img_uint8 = img_uint8.repeat(1, 3, 1, 1)  # grayscale data, as StyleGAN3's metric code does
        with torch.no_grad():
            return self.module(img_uint8, **kwargs).float()


_loaded: dict = {}
_notified: set = set()


def _missing_message(spec: DetectorSpec, tried: list[str]) -> str:
    cached = os.path.join(cache_root(), "detectors", spec.filename)
    return (f"This metric needs {spec.what}: the file {spec.filename}, published at {spec.url}. It is not "
            f"downloaded automatically here. Fetch it on a machine with internet access and either pass "
            f"--detector {spec.name}=/path/to/{spec.filename} to 'ganstack metrics', set {spec.env}=/path/to/"
            f"{spec.filename} (also read by 'ganstack train --metrics'), or copy it to {cached}. "
            f"Looked in: {'; '.join(tried) or 'nothing given'}.")


def _is_url(s: str) -> bool:
    return urllib.parse.urlparse(s).scheme in ("http", "https", "file")


def _download(url: str, dest_dir: str) -> str:
    """Fetch ``url`` into a temporary file in ``dest_dir`` (renamed into the cache once verified)."""
    os.makedirs(dest_dir, exist_ok=True)
    ext = os.path.splitext(urllib.parse.urlparse(url).path)[1] or ".pt"
    fd, tmp = tempfile.mkstemp(prefix=".download-", suffix=ext, dir=dest_dir)
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=60) as r:  # noqa: S310 - user-given URL
            size = r.headers.get("Content-Length") if getattr(r, "headers", None) is not None else None
            name = os.path.basename(urllib.parse.urlparse(url).path) or url
            with progress(total=int(size) if size and size.isdigit() else None, desc=f"downloading {name}",
                          unit="B") as bar:
                for chunk in iter(lambda: r.read(1 << 20), b""):
                    f.write(chunk)
                    bar.update(len(chunk))
    except Exception as exc:
        os.remove(tmp)
        raise DetectorError(f"Could not download {url} ({type(exc).__name__}: {exc}). Download it by hand and "
                            f"give the local path instead.") from None
    return tmp


def _expected_digests(spec: DetectorSpec, sha256: Optional[str]) -> tuple:
    pinned = sha256 or os.environ.get(f"{spec.env}_SHA256")
    return (pinned.lower(),) if pinned else tuple(spec.sha256)


def _cache_path(spec: DetectorSpec, ext: str = ".pt") -> str:
    return os.path.join(cache_root(), "detectors", os.path.splitext(spec.filename)[0] + ext)


def locate(name: str, given: Optional[str] = None, sha256: Optional[str] = None) -> tuple[str, str, bool]:
    """Find and hash-check detector ``name``; return ``(path, sha256, verified)``. Writes nothing to the
    cache (:func:`load_detector` caches a file only after it has loaded and answered like a feature
    network). A URL is downloaded to a temporary file in the cache folder, which is returned."""
    if name not in DETECTORS:
        raise DetectorError(f"Unknown feature network {name!r}; known: {', '.join(DETECTORS)}.")
    spec = DETECTORS[name]
    cache_dir = os.path.join(cache_root(), "detectors")
    candidates = []
    if given:
        candidates.append(("--detector", given))
    if os.environ.get(spec.env):
        candidates.append((spec.env, os.environ[spec.env]))
    for ext in (".pt", ".pkl"):
        candidates.append(("cache", _cache_path(spec, ext)))
    tried = []
    for source, value in candidates:
        path = value
        downloaded = False
        if _is_url(value):
            path = _download(value, cache_dir)
            downloaded = True
        path = os.path.expanduser(path)
        if not os.path.isfile(path):
            tried.append(f"{value} ({source})")
            if source != "cache":
                what = "is a folder, not a file" if os.path.isdir(path) else "does not exist"
                raise DetectorError(f"The {name} feature network given by {source} ({value}) {what}. "
                                    + _missing_message(spec, tried))
            continue
        digest = file_sha256(path)
        expected = _expected_digests(spec, sha256)
        if expected and digest not in expected:
            if downloaded:
                os.remove(path)
            raise DetectorError(f"{value} ({source}) has SHA-256 {digest}, but {spec.filename} has "
                                f"{' or '.join(expected)}. It is another or a corrupted file; fetch {spec.url} "
                                f"again (or unset {spec.env}_SHA256 if you pinned a different file on purpose).")
        verified = bool(expected)
        if path.endswith(".pkl") and not verified:
            if downloaded:
                os.remove(path)
            raise DetectorError(f"{value} is a pickle (.pkl), which runs code when loaded, and its SHA-256 ({digest}) "
                                f"cannot be checked against a known digest. Use the TorchScript file {spec.filename} "
                                f"({spec.url}) instead, or pin this file with {spec.env}_SHA256={digest} if you trust it.")
        return path, digest, verified
    raise DetectorError(_missing_message(spec, tried))


def _load_module(name: str, path: str, device) -> torch.nn.Module:
    """Load ``path`` and check that it answers like a feature network (``net(uint8 images,
    return_features=True)`` -> ``[N, F]`` finite features); DetectorError otherwise."""
    from ganstack.stylegan_base.cli_support import describe_load_error

    spec = DETECTORS[name]
    try:
        if path.endswith(".pkl"):
            import pickle
            with open(path, "rb") as f:
                module = pickle.load(f)  # noqa: S301 - only after the digest matched a pinned/published one
        else:
            module = torch.jit.load(path, map_location=device)
        module = module.eval().to(device)
    except Exception as exc:  # noqa: BLE001 - any failure means the file is not the network
        raise DetectorError(f"{path} could not be loaded as the {name} feature network: it "
                            f"{describe_load_error(exc, path)}. Expected the TorchScript file {spec.filename} "
                            f"from {spec.url}.") from None
    try:
        with torch.no_grad():
            out = module(torch.zeros([1, 3, 32, 32], dtype=torch.uint8, device=device), return_features=True)
        ok = isinstance(out, torch.Tensor) and out.ndim == 2 and out.shape[0] == 1 and bool(out.float().isfinite().all())
        problem = "" if ok else f"it returned {type(out).__name__} {list(getattr(out, 'shape', []))}"
    except Exception as exc:  # noqa: BLE001
        problem = f"calling it failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"
    if problem:
        raise DetectorError(f"{path} loads, but it is not the {name} feature network: given uint8 images and "
                            f"return_features=True it should return [N, features] ({problem}). Expected "
                            f"{spec.filename} from {spec.url}.")
    return module


def _cache(name: str, path: str, digest: str, verified: bool, device, log) -> str:
    """Copy a file that loaded and answered correctly into the cache, atomically; returns the path to use.

    An existing cached file is replaced only when the new file's digest is pinned or published, or when
    the cached one is broken; otherwise it is kept (it may be the right file) and a note says so.
    """
    spec = DETECTORS[name]
    cached = _cache_path(spec, os.path.splitext(path)[1] or ".pt")
    if os.path.abspath(path) == os.path.abspath(cached):
        return path
    downloaded = os.path.basename(path).startswith(".download-")
    if os.path.isfile(cached):
        old = file_sha256(cached)
        keep = old == digest
        if not keep and not verified:
            try:
                _load_module(name, cached, "cpu")
                keep = True
            except DetectorError:
                keep = False  # a broken cache file is replaced by the good one
            if keep:
                log(f"note: using {path} for this run; the cache keeps {cached} (SHA-256 {old}), which is "
                    f"another file. Delete it to cache this one instead.")
        if keep and old == digest:
            if downloaded:
                os.remove(path)
            return cached
        if keep:
            if downloaded:  # keep the download under a name of its own, beside the cached file
                named = os.path.splitext(cached)[0] + f".{digest[:12]}" + os.path.splitext(cached)[1]
                os.replace(path, named)
                return named
            return path
    os.makedirs(os.path.dirname(cached), exist_ok=True)
    tmp = cached + f".tmp-{os.getpid()}"
    try:
        if downloaded:
            os.replace(path, tmp)
        else:
            shutil.copyfile(path, tmp)
        os.replace(tmp, cached)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return cached


def load_detector(name: str, given: Optional[str] = None, device="cpu", sha256: Optional[str] = None,
                  log=print) -> Detector:
    """Locate (see :func:`locate`), load and check detector ``name`` once per process and device; a given or
    downloaded file is copied into the cache only after it loaded and answered like a feature network."""
    path, digest, verified = locate(name, given, sha256)
    key = (digest, str(device))
    if key in _loaded:
        return _loaded[key]
    try:
        module = _load_module(name, path, device)
    except DetectorError as exc:
        if os.path.basename(path).startswith(".download-"):
            os.remove(path)
        if os.path.abspath(path).startswith(os.path.abspath(os.path.join(cache_root(), "detectors")) + os.sep):
            raise DetectorError(f"The cached {name} feature network is damaged: {exc} Delete {path} and give "
                                f"the file again (--detector {name}=PATH or {DETECTORS[name].env}).") from None
        raise
    path = _cache(name, path, digest, verified, device, log)
    if not verified and digest not in _notified:
        _notified.add(digest)
        log(f"note: {name} feature network {path} has SHA-256 {digest}; no published digest is known to "
            f"ganstack, so it is not verified (pin it with {DETECTORS[name].env}_SHA256).")
    det = Detector(name=name, module=module, path=path, sha256=digest, verified=verified)
    _loaded[key] = det
    return det
