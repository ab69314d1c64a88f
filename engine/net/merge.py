"""Merge trained models that share one encoder into one model with their decoders as members.

Runs trained with a frozen pretrained trunk (``cli.py train --encoder-lr-mult 0``) hold the same
encoder weights and differ only in the trunk's BatchNorm running statistics (each run's estimate
of the same statistics of the training photos) and in their decoders. ``merge_members`` puts every
decoder member of every source into one ``ColorizerNet`` with ``members`` = their total: the trunk
runs once, its running statistics are the sources' mean, and the output is the members' mean UV
(``engine.net.model``). Sources whose encoder weights differ (a trunk that learned) or whose model
configs differ in anything but ``members`` and the annealed-mean temperature are refused.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from engine.core.errors import ColorizerError
from engine.net.model import MAX_MEMBERS, ColorizerNet, ModelConfig

# encoder buffers that are per-run estimates of one statistic (averaged), not learned weights
_STATISTICS = ("running_mean", "running_var")


class MergeError(ColorizerError):
    """Models that cannot share one encoder."""


def _config_without(config: ModelConfig) -> dict[str, Any]:
    d = config.to_dict()
    d.pop("members")
    d["head_options"] = {k: v for k, v in d["head_options"].items() if k != "temperature"}
    return d


def _member_state(state: dict[str, torch.Tensor], member: int, into: int) -> dict[str, torch.Tensor]:
    """``state``'s member ``member`` keys renamed to member ``into``."""
    prefix = f"members.{member}."
    return {f"members.{into}.{k[len(prefix):]}": v for k, v in state.items() if k.startswith(prefix)}


def merge_members(sources: list[tuple[str, ModelConfig, dict[str, torch.Tensor]]]
                  ) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """``[(name, config, state_dict), ...]`` (two or more) -> ``(config, state_dict)`` of the merged model.

    ``state_dict``: a ``ColorizerNet`` state (legacy single-member keys are accepted). The head options
    (an annealed-mean T included) are the first source's. Raises ``MergeError`` naming the source and the reason.
    """
    if len(sources) < 2:
        raise MergeError(f"merge: expected two or more models, found {len(sources)}")
    first_name, first_config, _ = sources[0]
    total = sum(c.members for _, c, _ in sources)
    if total > MAX_MEMBERS:
        raise MergeError(f"merge: expected at most {MAX_MEMBERS} members in all, found {total}")
    base = _config_without(first_config)
    states = []
    for name, config, state in sources:
        if _config_without(config) != base:
            diff = sorted(k for k, v in _config_without(config).items() if base.get(k) != v)
            raise MergeError(f"{name}: model config differs from {first_name}'s in {', '.join(diff)}")
        # normalise legacy keys and check completeness through a real model
        net = ColorizerNet(config)
        try:
            net.load_state_dict(state)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise MergeError(f"{name}: weights do not fit its model config ({first})") from e
        states.append((name, config, net.state_dict()))
    reference = states[0][2]
    merged: dict[str, torch.Tensor] = {}
    for key, value in reference.items():
        if not key.startswith("encoder."):
            continue
        values = [s[key] for _, _, s in states]
        kind = key.rsplit(".", 1)[-1]
        if kind in _STATISTICS:
            merged[key] = torch.stack([v.float() for v in values]).mean(0).to(value.dtype)
            continue
        if kind != "num_batches_tracked":  # a counter: the first source's
            for (name, _, _), v in zip(states[1:], values[1:]):
                if not torch.equal(v, value):
                    raise MergeError(f"{name}: encoder weight {key} differs from {first_name}'s: members share one "
                                     "encoder, so only runs with a frozen encoder (--encoder-lr-mult 0) merge")
        merged[key] = value.clone()
    into = 0
    for _, config, state in states:
        for member in range(config.members):
            merged.update(_member_state(state, member, into))
            into += 1
    config = dataclasses.replace(first_config, members=total)
    ColorizerNet(config).load_state_dict(merged)  # every key present and of the right shape
    return config, merged
