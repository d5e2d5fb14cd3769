"""DICOM network node: receive bone scans (C-STORE SCP), queue them durably, predict, send results to the PACS.

    from bonescan.node import Node, NodeConfig, Destination
    node = Node(NodeConfig(run="runs/demo", store="node-store", forward=Destination.parse("PACS@10.0.0.5:104")))
    node.serve_forever()

One module per job: `config` (settings), `intake` (checks at the door, durable write, queueing), `scp`
(associations and DIMSE handlers), `queue` (SQLite durable queue and its states), `worker` (prediction loop),
`sender` (C-STORE to the PACS with retry and backoff), `followup` (a study against its patient's prior),
`status` (what a store holds), `service` (the node),
`bench` (studies per minute and latency, end to end).
"""

from .config import Destination, NodeConfig, StorePaths
from .queue import NodeQueue
from .service import Node
from .status import format_status, node_status

__all__ = ["Destination", "Node", "NodeConfig", "NodeQueue", "StorePaths", "format_status", "node_status"]
