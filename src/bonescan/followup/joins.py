"""How the change network's new lesions join the lesion judge's in the count the PCWG3 verdict uses (`--join`).

Each join takes three counts on one scan: the lesions the judge of the reader's hotspots calls new (the rules, or a
learned judge), the change network's new lesions, and those of them that lie on none of the lesions the judge was
offered (lesions unseen on the earlier visits), so a lesion seen by both counts once.
- either: the larger of the judge's count and the network's (either judge can call >= 2 new lesions);
- union: the judge's new lesions plus the network's that lie apart from its candidates: a new focus the reader
  never marked, or outlined together with an old lesion, counts beside those the judge found;
- network: the network's count alone.
The node's configuration names them again (`node.config.NODE_JOINS`): importing the follow-up package loads torch.
"""

from __future__ import annotations

from typing import Callable

from ..errors import ConfigError

JOINS: dict[str, Callable[[int, int, int], int]] = {
    "either": lambda judged, network, apart: max(judged, network),
    "union": lambda judged, network, apart: judged + apart,
    "network": lambda judged, network, apart: network,
}


def check_join(join: str) -> str:
    """`join` when it names one of `JOINS`; otherwise one clear error naming --join."""
    if join not in JOINS:
        raise ConfigError("--join", f"unknown join {join!r}; choose one of {', '.join(JOINS)}")
    return join
