"""What travels inside Flower messages: message types, record layouts, tensor and byte encodings.

Every CoDream exchange is one Flower ``Message`` whose content is a ``RecordDict`` with a few
records of fixed names:

``"cfg"``   a ``ConfigRecord`` of scalars (round, step, request kind, loss weights, ...);
``"x"``     an ``ArrayRecord`` of tensors (dreams down; a gradient, change or logits up in plain
            mode; soft labels and dreams for the distillation buffer);
``"proto"`` a ``ConfigRecord`` whose ``"in"`` (server to client) or ``"out"`` (client to server)
            entry is a list of secure-aggregation wire messages, byte for byte what
            ``protocols.Client`` / ``protocols.Server`` produce and consume (no re-encoding,
            no pickle: ``protocols.wire`` validates them on arrival);
``"terms"`` a ``ConfigRecord`` of the client's dream-loss terms (reported in metrics as in-process).

Tensors are float32 NumPy arrays inside Flower ``Array`` objects (``np.save`` format, never
pickled). Byte counts are Flower's own ``count_bytes`` of every record of a message: what the run
reports as communication is measured from the payloads actually sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from securedream.dreams import DreamLossWeights

# Message types (Flower routes "<category>.<action>" to the ClientApp function registered for it).
HELLO = "query.hello"  # who are you: partition, model, data shape; reply also checks the config
TRAIN = "train"  # local training for one round
DREAM = "query.dream"  # compute a dream gradient / local change / logits (and mask it if secure)
SECAGG = "query.secagg"  # secure-aggregation set-up and relay of protocol messages
DISTILL = "train.distill"  # new buffer entries, distillation when due, then test accuracy

# Kinds of DREAM requests; the aggregation channel follows from the kind.
GRADIENT, DELTA, LOGITS = "gradient", "delta", "logits"


def to_array(tensor: torch.Tensor) -> Array:
    """A float32 tensor as a Flower Array (``np.save`` format, ``allow_pickle=False``)."""
    return Array(np.ascontiguousarray(tensor.detach().cpu().numpy()))


def tensors_record(tensors: Mapping[str, torch.Tensor]) -> ArrayRecord:
    record = ArrayRecord()
    for key, value in tensors.items():
        record[key] = to_array(value)
    return record


def read_tensor(record: ArrayRecord, key: str) -> torch.Tensor:
    """The tensor stored under ``key`` (a copy: NumPy arrays loaded from bytes are read-only)."""
    return torch.from_numpy(np.array(record[key].numpy(), copy=True))


def weights_config(weights: DreamLossWeights) -> dict[str, float]:
    return {
        "w_entropy": weights.entropy,
        "w_tv": weights.tv,
        "w_l2": weights.l2,
        "w_bn": weights.bn,
        "w_diversity": weights.diversity,
        "w_target": weights.target,
    }


def weights_from_config(cfg: Mapping[str, Any]) -> DreamLossWeights:
    return DreamLossWeights(
        float(cfg["w_entropy"]),
        float(cfg["w_tv"]),
        float(cfg["w_l2"]),
        float(cfg["w_bn"]),
        float(cfg["w_diversity"]),
        target=float(cfg.get("w_target", 0.0)),
    )


def content(
    cfg: Mapping[str, Any] | None = None,
    *,
    tensors: Mapping[str, torch.Tensor] | None = None,
    proto: Sequence[bytes] | None = None,
    proto_key: str = "in",
    terms: Mapping[str, float] | None = None,
) -> RecordDict:
    """Build a message content from its parts (records that are ``None`` are left out)."""
    records: dict[str, Any] = {}
    if cfg is not None:
        records["cfg"] = ConfigRecord(dict(cfg))
    if tensors:
        records["x"] = tensors_record(tensors)
    if proto is not None:
        records["proto"] = ConfigRecord({proto_key: list(proto)} if proto else {})
    if terms is not None:
        records["terms"] = ConfigRecord({k: float(v) for k, v in terms.items()})
    return RecordDict(records)


def proto_messages(rd: RecordDict, key: str) -> list[bytes]:
    """The protocol wire messages carried under ``proto[key]`` (none if absent)."""
    if "proto" not in rd:
        return []
    record = rd["proto"]
    if key not in record:
        return []
    value = record[key]
    if isinstance(value, bytes):
        return [value]
    return [bytes(v) for v in value]  # type: ignore[union-attr]


def config_of(rd: RecordDict) -> ConfigRecord:
    return rd["cfg"] if "cfg" in rd else ConfigRecord()  # type: ignore[return-value]


def payload_bytes(rd: RecordDict) -> int:
    """Bytes of every record in a message content, as Flower counts them (keys included)."""
    return int(sum(record.count_bytes() for record in rd.values()))
