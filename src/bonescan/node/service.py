"""The node as one object: lock the store, recover, load the network, listen, predict, send; stop cleanly."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import threading
import time

from ..errors import ConfigError
from ..fileio import write_text_atomic
from .config import NodeConfig
from .intake import Intake, accepted_sop_classes
from .queue import NodeQueue
from .retention import RetentionKeeper
from .scp import StorageSCP, client_tls_context
from .sender import Sender
from .worker import PredictionWorker, Predictor

log = logging.getLogger("bonescan.node")


class Node:
    """A running DICOM node over one store folder (see `bonescan.node` for what it does)."""

    def __init__(self, config: NodeConfig):
        self.config = config
        self.paths = config.store_paths()
        self._lock_handle = None
        self.queue: NodeQueue | None = None
        self.scp: StorageSCP | None = None
        self.worker: PredictionWorker | None = None
        self.sender: Sender | None = None
        self.retention: RetentionKeeper | None = None
        self.address: tuple[str, int] | None = None

    def start(self) -> tuple[str, int]:
        """Recover what a previous run left, load the network, listen, warm up; returns the bound (host, port).

        The node listens (and resends pending results) before the warm-up study, so a restart after a kill is
        back on the network as soon as the run is loaded; received instances wait in the queue meanwhile.
        """
        config = self.config
        change_model = judge = None
        if config.followup:  # refused before the store is locked or a thread starts
            from .followup import load_followup_models

            change_model, judge = load_followup_models(config.change_net, config.judge, config.join, log.warning)
        self.paths.root.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        self.queue = NodeQueue(self.paths.database)
        sop_classes = accepted_sop_classes(config.accept_secondary_capture)
        intake = Intake(self.queue, self.paths.incoming, sop_classes, reserve_bytes=int(config.reserve_mb * 1e6))
        found = intake.recover_files()
        recovery = self.queue.recover()
        if found:
            self.queue.record_event("info", f"recovered {found} instances stored just before a stop")
        log.info("store %s: %s%s", self.paths.root, recovery.describe(),
                 f"; {found} instance files queued again" if found else "")
        predictor = Predictor(config.run, self.paths.results, config.operating_point, config.batch_size,
                              config.device, config.lesions)
        if predictor.point.warning:
            log.warning("%s", predictor.point.warning)
        if config.forward is not None:
            self.sender = Sender(self.queue, config.forward, config.ae_title, config.retry_base, config.retry_max,
                                 config.poll, config.forward_timeout, tls=client_tls_context(config))
            self.sender.start()
        comparer = None
        if config.followup:
            from .followup import PriorComparer

            comparer = PriorComparer(predictor.lesion_step.model, self.paths.results, change_model=change_model,
                                     join=config.join, judge=judge)
        self.worker = PredictionWorker(self.queue, predictor, config.complete_after, config.forward is not None,
                                       config.poll, on_result=self.sender.wake.set if self.sender else None,
                                       comparer=comparer)
        intake.on_stored = self.worker.wake.set
        self.scp = StorageSCP(config, intake, sop_classes)
        try:
            self.address = self.scp.start()
        except OSError as error:
            self.stop()
            raise ConfigError(f"{config.host}:{config.port}", f"cannot listen ({error.strerror or error})") from error
        log.info("%s listening on %s:%d%s; results %s", config.ae_title, *self.address, " (TLS)" * config.tls,
                 f"sent to {config.forward}{' over TLS' * (config.forward_tls_ca is not None)}"
                 if config.forward else f"stored in {self.paths.results}")
        write_text_atomic(self.paths.live, json.dumps({
            "pid": os.getpid(), "ae_title": config.ae_title, "host": self.address[0], "port": self.address[1],
            "tls": config.tls, "forward": str(config.forward) if config.forward else None, "started": time.time(),
            "operating_point": predictor.point.name, "threshold": predictor.point.threshold, "run": str(config.run),
            "lesions": str(config.lesions) if config.lesions else None, "followup": config.followup,
            "keep_days": config.keep_days,
        }) + "\n")
        try:
            log.info("network ready: one synthetic study read in %.2f s", predictor.warm_up())
        except BaseException:
            self.stop()  # a run that cannot read a study must not leave a node that only collects them
            raise
        self.worker.start()
        if config.keep_days is not None:
            self.retention = RetentionKeeper(self.queue, self.paths, config.keep_days, keep_priors=config.followup,
                                             interval=config.retention_interval)
            self.retention.start()
        return self.address

    def _take_lock(self) -> None:
        handle = open(self.paths.lock, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise ConfigError(self.paths.root, "another node is running on this store") from None
        self._lock_handle = handle

    def stop(self) -> None:
        """Stop listening, let the current batch and send finish, close the queue."""
        if self.scp is not None:
            self.scp.stop()
        for thread in (self.worker, self.sender, self.retention):
            if thread is not None:
                thread.stop()
        for thread in (self.worker, self.sender, self.retention):
            if thread is not None and thread.is_alive():
                thread.join(timeout=60)
        if self.queue is not None:
            self.queue.close()
        if self._lock_handle is not None:
            self.paths.live.unlink(missing_ok=True)
            self._lock_handle.close()
            self._lock_handle = None
        log.info("node stopped")

    def serve_forever(self) -> None:
        """Run until SIGTERM or SIGINT, then stop cleanly."""
        done = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: done.set())
        self.start()
        try:
            while not done.wait(1.0):
                pass
        finally:
            self.stop()
