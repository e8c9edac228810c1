"""File helpers over tf.io.gfile (local paths and gs:// alike), atomic writes."""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import tensorflow as tf


def is_local(path: str) -> bool:
    return "://" not in path


def join(*parts: str) -> str:
    return os.path.join(*parts)


def read_text(path: str) -> str:
    with tf.io.gfile.GFile(path, "r") as f:
        return f.read()


def temporary_sibling(path: str) -> str:
    """A fresh temporary name beside ``path`` for an atomic write, after
    removing the temporaries an interrupted earlier write of ``path`` left."""
    for stale in tf.io.gfile.glob(f"{path}.tmp-*"):
        try:
            remove(stale)
        except tf.errors.NotFoundError:
            pass
    return f"{path}.tmp-{uuid.uuid4().hex[:8]}"


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write to a temporary sibling, then rename over ``path``."""
    parent = os.path.dirname(path)
    if parent:
        tf.io.gfile.makedirs(parent)
    tmp = temporary_sibling(path)
    with tf.io.gfile.GFile(tmp, "wb") as f:
        f.write(data)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str) -> Any:
    return json.loads(read_text(path))


def replace_dir(tmp_dir: str, final_dir: str) -> None:
    """Move a finished directory into place (removing an older one)."""
    if tf.io.gfile.exists(final_dir):
        try:
            tf.io.gfile.rmtree(final_dir)
        except tf.errors.NotFoundError:
            pass  # object stores may report a prefix with nothing under it
    try:
        tf.io.gfile.rename(tmp_dir, final_dir)
    except (tf.errors.AlreadyExistsError, tf.errors.UnimplementedError, tf.errors.FailedPreconditionError):
        # File systems without directory renames: copy, then drop the temporary.
        copy(tmp_dir, final_dir)
        tf.io.gfile.rmtree(tmp_dir)


def remove(path: str) -> None:
    """Delete a file or a directory tree."""
    if tf.io.gfile.isdir(path):
        tf.io.gfile.rmtree(path)
    else:
        tf.io.gfile.remove(path)


def copy(src: str, dst: str) -> None:
    """Copy a file or a directory tree (local or gs:// alike)."""
    if not tf.io.gfile.isdir(src):
        tf.io.gfile.makedirs(os.path.dirname(dst) or ".")
        tf.io.gfile.copy(src, dst, overwrite=True)
        return
    for dirpath, _, files in tf.io.gfile.walk(src):
        rel = os.path.relpath(dirpath, src)
        target = dst if rel == "." else os.path.join(dst, rel)
        tf.io.gfile.makedirs(target)
        for name in files:
            tf.io.gfile.copy(os.path.join(dirpath, name), os.path.join(target, name), overwrite=True)
